"""`mistralrs bench` on a tiny model: the reference's table, and its inputs checked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from mistralrs.cli.bench import Measure


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> str:
    return tiny_model_dir("llama")


def bench(model: str, backend: str, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "mistralrs.cli.main", "bench", "-m", model, "--cpu", "--backend", backend, *args]
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(argv, text=True, capture_output=True, env=env, timeout=120)


def test_bench_prints_the_reference_table(model, backend, tmp_path):
    log = tmp_path / "bench.jsonl"
    result = bench(model, backend, "--prompt-len", "16", "--gen-len", "8", "--iterations", "2", "--warmup", "1",
                   "--seed", "3", "--log", str(log))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Benchmark Results" in out and f"Model: {model}" in out and "Iterations: 2" in out
    assert re.search(r"│ Test\s+│ T/s\s+│ Latency\s+│", out)
    assert re.search(r"│ Prefill \(16 tokens\)\s+│ [\d.]+ ± [\d.]+\s+│ [\d.]+ ms \(TTFT\)\s*│", out), out
    assert re.search(r"│ Decode \(8 tokens\)\s+│ [\d.]+ ± [\d.]+\s+│ [\d.]+ ms/T\s*│", out), out
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["warmup"] for r in records if r["type"] == "response"] == [True, False, False]
    assert all(r["usage"]["completion_tokens"] == 8 for r in records if r["type"] == "response")
    assert len({tuple(r["prompt_token_ids"]) for r in records if r["type"] == "request"}) == 1


def test_bench_rejects_more_tokens_than_the_context(model, backend):
    result = bench(model, backend, "--prompt-len", "500", "--gen-len", "100")  # the tiny model holds 512
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "context" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_measure():
    assert Measure.of([2.0, 4.0]) == Measure(3.0, pytest.approx(2 ** 0.5))
    assert Measure.of([5.0]) == Measure(5.0, 0.0)
