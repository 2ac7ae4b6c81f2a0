"""Every architecture against Hugging Face transformers, on every backend, in fp32.

Reference: transformers' own forward pass with its KV cache (prefill, then one token
at a time), the same schedule the engine uses. Bound: max |diff| / max |logit| <= 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

from model_fixtures import ARCHS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROMPT, DECODE, GREEDY = 40, 16, 64
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def references(tiny_model_dir):
    """Per architecture: prompt ids, HF logits (prefill + incremental), HF greedy continuation."""
    cache = {}

    def get(arch):
        if arch in cache:
            return cache[arch]
        folder = tiny_model_dir(arch)
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        ids = np.random.default_rng(1).integers(5, 500, size=PROMPT + DECODE).tolist()
        steps = []
        with torch.no_grad():
            out = hf(torch.tensor([ids[:PROMPT]]), use_cache=True)
            prefill, past = out.logits[0].numpy(), out.cache
            for token in ids[PROMPT:]:
                out = hf(torch.tensor([[token]]), cache=past, use_cache=True)
                past = out.cache
                steps.append(out.logits[0, -1].numpy())
            # Greedy by hand: generate() would stop at the model's EOS, and we want all 64.
            out = hf(torch.tensor([ids[:PROMPT]]), use_cache=True)
            greedy, past = [], out.cache
            for _ in range(GREEDY):
                greedy.append(int(out.logits[0, -1].argmax()))
                out = hf(torch.tensor([[greedy[-1]]]), cache=past, use_cache=True)
                past = out.cache
        cache[arch] = (folder, ids, prefill, steps, greedy)
        return cache[arch]

    return get


def relative_error(ours, ref) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def assert_logits_match(llm, ids, prefill, steps) -> None:
    """The prompt in one pass, then one token at a time, each within TOLERANCE of transformers."""
    ops, model = llm.ops, llm.model
    caches = model.make_caches()
    ours = ops.to_numpy(model(ops.asarray(np.array([ids[:PROMPT]])), caches))[0]
    assert relative_error(ours, prefill) <= TOLERANCE, "prefill logits"
    for i, token in enumerate(ids[PROMPT:]):
        ours = ops.to_numpy(model(ops.asarray(np.array([[token]])), caches))[0, -1]
        assert relative_error(ours, steps[i]) <= TOLERANCE, f"decode step {i}"


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(arch, backend, references):
    from mistralrs import load

    folder, ids, prefill, steps, _ = references(arch)
    assert_logits_match(load(folder, backend=backend, dtype="f32"), ids, prefill, steps)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_continuation_matches_transformers(arch, backend, references):
    from mistralrs import load
    from mistralrs.engine.params import SamplingParams

    folder, ids, _, _, greedy = references(arch)
    llm = load(folder, backend=backend, dtype="f32")
    done = llm.generate(ids[:PROMPT], SamplingParams(temperature=0, max_tokens=GREEDY, ignore_eos=True))
    assert done.token_ids == greedy
    assert done.finish_reason == "length"
    assert done.usage.prompt_tokens == PROMPT and done.usage.completion_tokens == GREEDY


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_chunked_prefill_equals_one_pass(arch, backend, references):
    """A prompt fed in chunks (sliding windows included) gives the same logits as one pass."""
    from mistralrs import load

    folder, ids, prefill, _, _ = references(arch)
    llm = load(folder, backend=backend, dtype="f32", prefill_chunk=7)
    from mistralrs.engine.generate import prefill as run_prefill

    last = llm.ops.to_numpy(run_prefill(llm.model, llm.ops, ids[:PROMPT], llm.model.make_caches(), chunk=7))
    assert relative_error(last, prefill[-1]) <= TOLERANCE


@pytest.mark.parametrize("chunk", [7, 1000])
def test_lazy_prefill_runs_the_last_position_alone_with_the_same_logits(chunk, backend, references, monkeypatch):
    """Lazy backends (MLX) evaluate only the caches for all but the prompt's last position, which
    then runs alone; forced on here for eager torch too, the logits stay transformers'."""
    from mistralrs import load
    from mistralrs.engine.generate import prefill as run_prefill

    folder, ids, prefill, _, _ = references("gemma3")  # sliding-window layers too
    llm = load(folder, backend=backend, dtype="f32")
    llm.ops.lazy = True
    calls = []
    body = llm.model.model
    original = type(body).__call__
    monkeypatch.setattr(type(body), "__call__", lambda self, x, caches: calls.append(x.shape[1]) or original(self, x, caches))
    last = llm.ops.to_numpy(run_prefill(llm.model, llm.ops, ids[:PROMPT], llm.model.make_caches(), chunk=chunk))
    assert calls[-1] == 1 and sum(calls) == PROMPT  # the last position ran alone
    assert relative_error(last, prefill[-1]) <= TOLERANCE


@pytest.mark.parametrize("arch", ["qwen3", "gemma3", "phi3", "mistral"])
def test_compiled_layers_match_transformers(arch, backend, references):
    """torch.compile'd decoder layers (on by default for torch on the CPU) keep the same numbers:
    qk norms and sandwich norms, sliding windows, longrope and chunked prefill included."""
    if backend != "torch":
        pytest.skip("only the torch backend compiles its layers")
    from mistralrs import load
    from mistralrs.engine.params import SamplingParams

    folder, ids, prefill, steps, greedy = references(arch)
    llm = load(folder, backend=backend, dtype="f32", compile=True, prefill_chunk=24)
    assert_logits_match(llm, ids, prefill, steps)
    # generate() prefills in chunks of 24 here: a compiled chunk after earlier tokens too.
    done = llm.generate(ids[:PROMPT], SamplingParams(temperature=0, max_tokens=GREEDY, ignore_eos=True))
    assert done.token_ids == greedy
    body = llm.model.model
    for name, step in (("prompt chunks", body._compiled_prompt_layers), ("decode steps", body._compiled_decode_layers)):
        assert step.traces >= 1 and step.refusals == [], f"{name} fell back to torch.compile: {step.refusals}"
        assert not step.fallback.failed, f"{name} fell back to eager execution"
