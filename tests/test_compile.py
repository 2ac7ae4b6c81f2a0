"""Choosing whether to compile the decoder layers, and falling back when compiling fails.

That compiled layers compute the same numbers as transformers is checked per
architecture in test_conformance.py (test_compiled_layers_match_transformers).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mistralrs.backends.torch_compile import CompiledStep  # noqa: E402
from mistralrs.engine.compiling import ENV, compile_setting  # noqa: E402
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
    # bfloat16 activations between the kernels: fused code may round in another order.
    assert np.abs(a - b).max() <= 2e-2 * np.abs(a).max()
    assert not compiled.model.model._compiled_layer.failed


@pytest.mark.torch_env
@pytest.mark.parametrize("isq", [None, "q4_0"])
def test_warm_up_compiles_every_shape_a_generation_meets(tiny_model_dir, isq):
    """After loading, prompts of any length (fresh, and chunked after earlier tokens) and the
    decode steps after them run without compiling again: no stall at a user's first token."""
    from mistralrs import load
    from mistralrs.engine.params import SamplingParams

    llm = load(tiny_model_dir("qwen3"), backend="torch", cpu=True, isq=isq, compile=True, prefill_chunk=128)
    compiled = llm.model.model._compiled_layer
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    with torch.compiler.set_stance("fail_on_recompile"):
        for length in (2, 3, 37, 64, 70, 200, 301):  # 200 and 301: chunks of 128 then 72 / 45
            llm.generate(list(range(5, 5 + length)), params)
    # A recompile would have raised inside the compiled step, which then runs eagerly for good.
    assert not compiled.failed
