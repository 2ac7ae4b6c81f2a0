"""Shared fixtures: which backends to test, and tiny models built once per session."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
# Compiling the layers costs seconds per model load; the tests that check compiled layers
# ask for it explicitly (load(compile=True)). Subprocesses inherit the setting.
os.environ.setdefault("MISTRALRS_COMPILE", "0")
# Triton kernels (the CUDA path for quantized weights) run in Triton's interpreter on CPU
# tensors. Triton reads this when it is first imported, so it is set before anything is;
# on a GPU, TRITON_INTERPRET=0 runs the compiled kernels instead.
os.environ.setdefault("TRITON_INTERPRET", "1")

from model_fixtures import build_model, write_tokenizer  # noqa: E402


def selected_backends() -> list[str]:
    """MISTRALRS_TEST_BACKEND=torch|mlx|all (tox sets it per environment); default: all installed.

    A backend that is asked for explicitly must be importable: a missing MLX fails the
    run instead of silently skipping the MLX half of the suite.
    """
    wanted = os.environ.get("MISTRALRS_TEST_BACKEND", "all")
    if wanted == "all":
        return [b for b in ("torch", "mlx") if importlib.util.find_spec(b) is not None]
    for name in wanted.split(","):
        if importlib.util.find_spec(name) is None:
            raise RuntimeError(f"MISTRALRS_TEST_BACKEND asks for {name}, which is not installed")
    return wanted.split(",")


def pytest_collection_modifyitems(config, items):
    """Tests marked `torch_env` do not depend on the backend under test (or exercise torch
    alone); tox runs the suite once per backend, so they run where torch is selected only."""
    if "torch" in selected_backends():
        return
    skip = pytest.mark.skip(reason="independent of the backend under test: runs in the torch environment")
    for item in items:
        if "torch_env" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _short_warm_up(request, monkeypatch):
    """A compiled load here warms up one short prompt, not every shape family: each test then
    compiles only the families its own calls meet (cold, each family costs 10-20 s of the
    suite's time). Tests marked `full_warm_up` keep the whole list."""
    if "full_warm_up" not in request.keywords:
        from mistralrs.engine import compiling

        monkeypatch.setattr(compiling, "_WARM_PROMPTS", ((5, 5),))


@pytest.fixture(params=selected_backends())
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("tokenizer"))
    write_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A factory: tiny_model_dir("qwen3") -> folder, built once per architecture."""
    built: dict[str, str] = {}

    def make(arch: str) -> str:
        if arch not in built:
            folder = str(tmp_path_factory.mktemp(arch))
            built[arch] = build_model(arch, folder, tokenizer_from=tiny_tokenizer_dir)
        return built[arch]

    return make
