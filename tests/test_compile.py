"""Choosing whether to compile the decoder layers, and falling back when compiling fails.

That compiled layers compute the same numbers as transformers is checked per
architecture in test_conformance.py (test_compiled_layers_match_transformers).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mistralrs.backends.torch_compile import CompiledStep  # noqa: E402
from mistralrs.engine.compiling import ENV, compile_setting, compiles_layers  # noqa: E402
from mistralrs.errors import UserError  # noqa: E402


class FakeOps:
    def __init__(self, device="cpu", reason=None):
        self.device, self.reason = device, reason

    def compile_unavailable(self):
        return self.reason


def test_auto_compiles_on_the_cpu_when_a_compiler_is_present(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert compile_setting(None, FakeOps()) is True
    assert compile_setting(None, FakeOps(reason="no C++ compiler found")) is False
    assert compile_setting(None, FakeOps(device="cuda:0")) is False  # not verified on GPUs yet


def test_whether_a_load_would_compile_without_a_backend(monkeypatch):
    # What tune asks before any backend is loaded: the same decision as compile_setting's.
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/" + name)
    monkeypatch.delenv(ENV, raising=False)
    assert compiles_layers("torch", "cpu") is True
    assert compiles_layers("torch", "cuda") is False and compiles_layers("mlx", "cpu") is False
    monkeypatch.setenv(ENV, "0")
    assert compiles_layers("torch", "cpu") is False
    monkeypatch.setenv(ENV, "1")
    assert compiles_layers("torch", "cuda") is True and compiles_layers("mlx", "metal") is False
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert compiles_layers("torch", "cpu") is False
    monkeypatch.setenv(ENV, "maybe")
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/" + name)
    with pytest.raises(UserError, match="MISTRALRS_COMPILE='maybe'"):
        compiles_layers("torch", "cpu")


def test_the_environment_variable_and_the_argument(monkeypatch):
    monkeypatch.setenv(ENV, "0")
    assert compile_setting(None, FakeOps()) is False
    assert compile_setting(True, FakeOps()) is True  # the argument wins
    monkeypatch.setenv(ENV, "on")
    assert compile_setting(None, FakeOps(device="cuda:0")) is True
    monkeypatch.setenv(ENV, "maybe")
    with pytest.raises(UserError, match="MISTRALRS_COMPILE='maybe'.*1 .*0"):
        compile_setting(None, FakeOps())


def test_asking_to_compile_without_a_compiler_says_why(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(UserError, match="no C\\+\\+ compiler found.*MISTRALRS_COMPILE=0"):
        compile_setting(True, FakeOps(reason="no C++ compiler found (install g++ or clang, or set CXX)"))


def test_the_mlx_backend_runs_its_layers_as_they_are(monkeypatch):
    pytest.importorskip("mlx.core")
    from mistralrs.backends.mlx_ops import MlxOps

    monkeypatch.delenv(ENV, raising=False)
    ops = MlxOps(cpu=True)
    assert compile_setting(None, ops) is False
    with pytest.raises(UserError, match="runs its layers as they are"):
        compile_setting(True, ops)


def test_a_compiler_failure_falls_back_to_eager_once(capsys):
    calls = []

    def layer(x):
        calls.append(x)
        return x * 2

    def broken(*args):
        raise RuntimeError("inductor: C++ compile failed\ndetails...")

    step = CompiledStep(layer)
    step.compiled = broken
    assert step(3) == 6
    assert step.failed
    assert "compiling the decoder layer failed (RuntimeError: inductor: C++ compile failed)" in capsys.readouterr().err
    step.compiled = lambda *a: pytest.fail("a failed step must not try to compile again")
    assert step(4) == 8 and calls == [3, 4]


def test_an_error_in_the_inputs_is_raised_not_swallowed():
    def layer(x):
        raise ValueError("bad shape")

    step = CompiledStep(layer)
    step.compiled = layer
    with pytest.raises(ValueError, match="bad shape"):
        step(1)
    assert not step.failed


@pytest.mark.torch_env
@pytest.mark.parametrize("isq", ["q8_0", "q4_0", "q6k", None])
def test_compiled_quantized_and_bf16_layers_match_eager_ones(tiny_model_dir, isq):
    """The integer kernels (two-int4, int4, int8 rows) and bfloat16's packed oneDNN weights
    run inside compiled layers too: same numbers."""
    import numpy as np

    from mistralrs import load

    folder = tiny_model_dir("qwen3")
    dtype = "auto" if isq else "bf16"
    eager = load(folder, backend="torch", cpu=True, isq=isq, dtype=dtype, compile=False)
    compiled = load(folder, backend="torch", cpu=True, isq=isq, dtype=dtype, compile=True)
    ids = eager.encode("def quantize(weights): return [round(w) for w in weights]")

    def logits(llm):
        ops, model = llm.ops, llm.model
        caches = model.make_caches()
        prompt = ops.to_numpy(ops.astype(model(ops.asarray(np.asarray([ids[:-4]])), caches), "float32"))[0]
        steps = [ops.to_numpy(ops.astype(model(ops.asarray(np.asarray([[t]])), caches), "float32"))[0, -1]
                 for t in ids[-4:]]
        return np.concatenate([prompt, np.stack(steps)])

    a, b = logits(eager), logits(compiled)
    # bfloat16 activations between the kernels: fused code may round in another order. On CPUs
    # with native bfloat16, prompt products of 4- to 6-bit weights round their float32 inputs
    # to bfloat16 too (torch_cpu_linear.PROMPT_DTYPE), at other places in fused code: up to
    # 2.4 % measured on this random model's large logits.
    from mistralrs.backends.torch_cpu_linear import NATIVE_BF16

    assert np.abs(a - b).max() <= (4e-2 if NATIVE_BF16 else 2e-2) * np.abs(a).max()
    prompt = compiled.model.model._compiled_prompt_layers
    assert prompt.traces >= 1 and prompt.refusals == [] and not prompt.fallback.failed


@pytest.mark.torch_env
@pytest.mark.full_warm_up
@pytest.mark.parametrize("isq", [None, "q4_0"])
def test_warm_up_compiles_every_shape_a_generation_meets(tiny_model_dir, isq):
    """After loading, prompts of any length (fresh, and chunked after earlier tokens) and the
    decode steps after them run without compiling again: no stall at a user's first token."""
    from mistralrs import load
    from mistralrs.engine.params import SamplingParams

    llm = load(tiny_model_dir("qwen3"), backend="torch", cpu=True, isq=isq, compile=True, prefill_chunk=128)
    body = llm.model.model
    steps = {"prompt": body._compiled_prompt_layers, "decode": body._compiled_decode_layers}
    traced_at_load = {name: step.traces for name, step in steps.items()}
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    with torch.compiler.set_stance("fail_on_recompile"):
        for length in (2, 3, 37, 64, 70, 133, 200, 301):  # chunks of 128 then 5 / 72 / 128 and 45
            llm.generate(list(range(5, 5 + length)), params)
    # A torch.compile recompile (the fallbacks, the head) would have raised inside its step,
    # which then runs eagerly for good.
    for name, step in steps.items():
        assert step.traces == traced_at_load[name] and step.refusals == [], name
        assert not step.fallback.failed, name
    assert not llm.model._compiled_head.failed


# ---- decode steps traced once per shape (torch_fixed_shapes.FixedShapeStep) ----------------
def _layer_and_cache(llm, prompt_length: int):
    """The first decoder layer and its cache after a prompt, ready for single-token steps."""
    import numpy as np

    caches = llm.model.make_caches()
    llm.model(llm.ops.asarray(np.arange(5, 5 + prompt_length)[None]), caches)
    return llm.model.model.layers[0], caches[0]


def _steps(step, layer, cache, count: int, seed: int = 0, hidden: int = 64):
    """`count` single-token calls of step(layer, x, cache) on seeded random hidden states
    (the tiny models are 64 wide)."""
    generator = torch.Generator().manual_seed(seed)
    outputs = []
    for _ in range(count):
        cache.reserve(1)
        x = torch.randn(1, 1, hidden, generator=generator)
        outputs.append(step(layer, x, cache).clone())
    return outputs


@pytest.mark.torch_env
def test_decode_steps_match_eager_ones_as_the_cache_grows(tiny_model_dir):
    """The traced decode step (its guards, its symbolic position and capacity, the offset it
    writes back) gives the eager numbers through a cache growing from 256 to 512 positions,
    and the warm-up already traced every shape these steps meet."""
    import numpy as np

    from mistralrs import load

    folder = tiny_model_dir("qwen3")
    eager = load(folder, backend="torch", cpu=True, dtype="f32", compile=False)
    compiled = load(folder, backend="torch", cpu=True, dtype="f32", compile=True)
    decode = compiled.model.model._compiled_decode_layers
    traced_at_load = decode.traces
    assert traced_at_load >= 1 and decode.refusals == []

    def logits(llm):
        ops, model, caches = llm.ops, llm.model, llm.model.make_caches()
        ids = list(range(5, 255))
        model(ops.asarray(np.asarray([ids])), caches)
        out = [ops.to_numpy(model(ops.asarray(np.asarray([[t]])), caches))[0, -1] for t in range(20, 32)]
        return np.stack(out), [c.offset for c in caches], caches[0].keys.shape[2]

    (a, offsets_a, _), (b, offsets_b, capacity) = logits(eager), logits(compiled)
    assert capacity == 512 and offsets_a == offsets_b == [262] * len(offsets_a)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
    assert decode.traces == traced_at_load and decode.refusals == []


@pytest.mark.torch_env
def test_decode_calls_several_layers_per_compiled_graph(tiny_model_dir, monkeypatch):
    """Decode steps run the layers in groups (decoder.LAYERS_PER_DECODE_CALL); groups of different
    layer kinds get their own traces, a shorter last group too, and the numbers stay eager's
    past Gemma 3's 16-position window."""
    import numpy as np

    from mistralrs import load
    from mistralrs.models import decoder

    folder = tiny_model_dir("gemma3")  # layers: local, global, local
    eager = load(folder, backend="torch", cpu=True, dtype="f32", compile=False)
    monkeypatch.setattr(decoder, "LAYERS_PER_DECODE_CALL", 2)
    compiled = load(folder, backend="torch", cpu=True, dtype="f32", compile=True)
    body = compiled.model.model
    assert [len(group) for group in body._decode_groups] == [2, 1]

    def logits(llm):
        ops, model, caches = llm.ops, llm.model, llm.model.make_caches()
        model(ops.asarray(np.asarray([list(range(5, 15))])), caches)
        out = [ops.to_numpy(model(ops.asarray(np.asarray([[t]])), caches))[0, -1] for t in range(20, 40)]
        return np.stack(out), [c.offset for c in caches]

    (a, offsets_a), (b, offsets_b) = logits(eager), logits(compiled)
    assert offsets_a == offsets_b == [30, 30, 30]
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
    decode = body._compiled_decode_layers
    assert decode.traces >= 2 and decode.refusals == []


@pytest.mark.torch_env
def test_a_decode_step_it_cannot_trace_runs_through_the_fallback(tiny_model_dir):
    from mistralrs import load
    from mistralrs.backends.torch_fixed_shapes import FixedShapeStep

    llm = load(tiny_model_dir("qwen3"), backend="torch", cpu=True, dtype="f32", compile=False)
    layer_call = type(llm.model.model.layers[0]).__call__
    constant = torch.linspace(0, 1, 64)

    def reads_a_global(layer, x, cache):  # a tensor no argument holds: baked into a trace, it would go stale
        return layer_call(layer, x, cache) + constant

    fallback_calls = []

    def fallback(*args):
        fallback_calls.append(1)
        return reads_a_global(*args)

    layer, cache = _layer_and_cache(llm, 10)
    step = FixedShapeStep(reads_a_global, fallback)
    first = _steps(step, layer, cache, 2)
    assert len(fallback_calls) == 2 and step.traces == 0
    assert len(step.refusals) == 1  # once: the signature is left to the fallback for good
    layer, cache = _layer_and_cache(llm, 10)
    assert all(torch.equal(a, b) for a, b in zip(first, _steps(reads_a_global, layer, cache, 2), strict=True))


@pytest.mark.torch_env
def test_a_failed_shape_condition_traces_again(tiny_model_dir):
    """A branch on the position becomes a guard: past it, a second graph; before it, the first."""
    from mistralrs import load
    from mistralrs.backends.torch_fixed_shapes import FixedShapeStep

    llm = load(tiny_model_dir("qwen3"), backend="torch", cpu=True, dtype="f32", compile=False)
    layer_call = type(llm.model.model.layers[0]).__call__

    def branches(layer, x, cache):
        out = layer_call(layer, x, cache)
        return out * 2 if cache.offset > 13 else out

    layer, cache = _layer_and_cache(llm, 10)
    step = FixedShapeStep(branches, lambda *a: pytest.fail("nothing here needs the fallback"))
    traced = _steps(step, layer, cache, 6)  # offsets 11..16: the branch flips at 14
    assert step.traces == 2 and step.refusals == [] and cache.offset == 16
    layer, cache = _layer_and_cache(llm, 10)
    eager = _steps(branches, layer, cache, 6)
    assert all((a - b).abs().max() <= 1e-5 * b.abs().max() for a, b in zip(traced, eager, strict=True))  # fused: ~4e-7
    layer, cache = _layer_and_cache(llm, 10)
    _steps(step, layer, cache, 6)  # both graphs' conditions are checked before tracing anew
    assert step.traces == 2
