"""Tiny seeded models built with `transformers`, saved the way the hub ships them.

The engine loads these through exactly the code path that loads a real checkpoint.
Weights are random but seeded; `initializer_range` is large enough that logits have
clear winners, so greedy decoding does not hinge on 1e-7 ties.
"""

from __future__ import annotations

import glob
import json
import os
import sysconfig

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A Qwen3-style template that opens a thinking block unless enable_thinking is false.
CHATML_THINKING = CHATML.replace(
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}"
    "{% endif %}{% endif %}",
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
VOCAB = 512

ARCHS = ["llama", "llama3_rope", "mistral", "qwen2", "qwen3", "gemma3", "phi3"]


def _corpus() -> list[str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    texts = []
    for path in sorted(glob.glob(os.path.join(stdlib, "*.py")))[:60]:
        try:
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
        except (UnicodeDecodeError, OSError):
            pass
    texts.append("Héllo wörld — naïve café. 日本語のテキスト。 Emoji: 🙂🚀 Ελληνικά, русский.")
    return texts


def write_tokenizer(folder: str, template: str = CHATML) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = _corpus()
    tok.train_from_iterator(texts, trainer, length=len(texts))
    tok.save(os.path.join(folder, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
        "chat_template": template,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def _config(arch: str):
    import transformers as tf

    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    )
    if arch == "llama":
        return tf.LlamaConfig(**common, tie_word_embeddings=False, rms_norm_eps=1e-5)
    if arch == "llama3_rope":
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
        return tf.LlamaConfig(**common, tie_word_embeddings=True, rope_parameters=rope)
    if arch == "mistral":
        return tf.MistralConfig(**common, sliding_window=16, tie_word_embeddings=False)
    if arch == "qwen2":
        return tf.Qwen2Config(**common, tie_word_embeddings=True)
    if arch == "qwen3":
        return tf.Qwen3Config(**common, head_dim=32, tie_word_embeddings=True)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(
            **{**common, "num_hidden_layers": 3}, head_dim=32, sliding_window=16, query_pre_attn_scalar=24,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"], tie_word_embeddings=True,
        )
    if arch == "phi3":
        half = 16 // 2  # head_dim 16
        rope = {"rope_type": "longrope", "rope_theta": 10000.0,
                "short_factor": [1.0 + 0.1 * i for i in range(half)],
                "long_factor": [2.0 + 0.5 * i for i in range(half)]}
        return tf.Phi3Config(**{**common, "max_position_embeddings": 256}, original_max_position_embeddings=64,
                             rope_parameters=rope, tie_word_embeddings=False)
    raise ValueError(arch)


def build_model(arch: str, folder: str, seed: int = 0, tokenizer_from: str | None = None) -> str:
    """Save a tiny `arch` model (fp32) with tokenizer into `folder`; returns the folder."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch), dtype=torch.float32)
    model.save_pretrained(folder)
    if tokenizer_from:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(tokenizer_from, name), os.path.join(folder, name))
    else:
        write_tokenizer(folder)
    return folder
