"""`mistralrs serve` as a user starts it: a process that loads the model, listens, and answers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_command(model: str, backend: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "mistralrs.cli.main", "serve", "-m", model, "--cpu", "--backend", backend, *args]


def wait_for_health(process: subprocess.Popen, port: int, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited early: {process.stderr.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("serve did not answer /health in time")


def test_serve_loads_the_model_and_answers(tiny_model_dir, backend, tmp_path):
    model = tiny_model_dir("qwen3")
    port = free_port()
    log = tmp_path / "requests.jsonl"
    process = subprocess.Popen(serve_command(model, backend, "--host", "127.0.0.1", "-p", str(port),
                                             "--max-seqs", "4", "-l", str(log)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    try:
        wait_for_health(process, port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as resp:
            assert json.loads(resp.read())["data"][0]["id"] == model
        body = json.dumps({"model": model, "prompt": "abc", "max_tokens": 2, "ignore_eos": True}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert json.loads(resp.read())["usage"]["completion_tokens"] == 2
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/v1" in stderr
    # -l/--log: the request as it arrived, then its answer, one JSON line each.
    request, response = [json.loads(line) for line in log.read_text().splitlines()]
    assert request["type"] == "request" and request["endpoint"] == "/v1/completions"
    assert request["body"]["prompt"] == "abc"
    assert response["type"] == "response" and response["usage"][0]["completion_tokens"] == 2
    assert response["finish_reasons"] == ["length"] and isinstance(response["choices"][0]["text"], str)


def test_serve_refuses_max_seqs_below_one():
    result = subprocess.run(serve_command("unused", "torch", "--max-seqs", "0"), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "--max-seqs" in result.stderr


@pytest.mark.parametrize("args, named", [(["--ui"], "--ui"), (["--mcp-port", "9000"], "--mcp-port")])
def test_serve_refuses_unbuilt_server_features(args, named):
    result = subprocess.run(serve_command("unused", "torch", *args), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and named in result.stderr and "not implemented yet" in result.stderr


def test_serve_names_a_port_in_use(tiny_model_dir, backend):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(serve_command(tiny_model_dir("qwen3"), backend, "--host", "127.0.0.1", "-p", str(port)),
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and str(port) in result.stderr and "--port" in result.stderr
