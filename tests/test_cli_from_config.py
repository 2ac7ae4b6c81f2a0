"""`mistralrs from-config`: two models served at once and routed by name (official `openai`
client), `command = "run"`, and each kind of bad file as one error line with exit code 2.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import openai
import pytest

from cli_runner import cli


def config_error(capsys, tmp_path, text: str) -> str:
    """Run from-config on `text`; it must fail with one `error:` line and exit code 2."""
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    code, out, err = cli(capsys, "from-config", "--file", str(path))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, out, err)
    return lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "HF_HUB_OFFLINE": "1"}


def two_models(qwen: str, llama: str, backend: str, port: int) -> str:
    return f'''
command = "serve"
default_model_id = "{llama}"

[global]
seed = 1

[server]
host = "127.0.0.1"
port = {port}

[runtime]
max_seqs = 4

[[models]]
kind = "auto"
model_id = "{qwen}"
backend = "{backend}"

[[models]]
kind = "text"
model_id = "{llama}"
backend = "{backend}"

[models.device]
cpu = true
max_seq_len = 256
'''


@pytest.fixture
def two_model_server(tmp_path, tiny_model_dir, backend):
    qwen, llama = tiny_model_dir("qwen3"), tiny_model_dir("llama")
    port = free_port()
    path = tmp_path / "two.toml"
    path.write_text(two_models(qwen, llama, backend, port), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "mistralrs.cli.main", "from-config", "-f", str(path)],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"from-config did not start: {proc.communicate()[1]}")
                time.sleep(0.2)
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                            timeout=60), qwen, llama
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serves_each_model_by_name(two_model_server):
    client, qwen, llama = two_model_server
    assert [m.id for m in client.models.list().data] == [qwen, llama]
    for name in (qwen, llama):
        chat = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
        assert chat.model == name and chat.usage.completion_tokens == 3
        text = client.completions.create(model=name, prompt="Once", max_tokens=2)
        assert text.model == name
    # `default` and an absent model go to default_model_id.
    assert client.completions.create(model="default", prompt="Once", max_tokens=1).model == llama
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nobody/else", messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    error = missing.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert qwen in error["message"] and llama in error["message"]


def test_run_chats_with_the_one_model(tmp_path, tiny_model_dir):
    path = tmp_path / "run.toml"
    path.write_text(f'command = "run"\n\n[[models]]\nkind = "auto"\nmodel_id = "{tiny_model_dir("qwen3")}"\n'
                    '[models.device]\ncpu = true\nmax_seq_len = 48\n', encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "mistralrs.cli.main", "from-config", "--file", str(path)],
                          input="Hello\n", env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()  # the answer to the piped line


MODEL = '[[models]]\nkind = "auto"\nmodel_id = "some/model"\n'


@pytest.mark.parametrize("text, expected", [
    ('command = "serve"\nport = = 3\n', ["not valid TOML", "line 2", "port"]),
    ('command = "serve"\n[[models]]\nkind = "picture"\nmodel_id = "a/b"\n', ["models[0].kind", "'picture'", "auto"]),
    ('command = "serve"\n[[models]]\nkind = "auto"\n', ["models[0].model_id", "missing"]),
    ('command = "serve"\n[[models]]\nmodel_id = "a/b"\n', ["models[0].kind", "missing"]),
    ('command = "serve"\n[server]\nprot = 1\n' + MODEL, ["unknown key `server.prot`"]),
    ('command = "serve"\n[server]\nport = "80"\n' + MODEL, ["server.port", "an integer"]),
    ('command = "serve"\n[server]\nport = 70000\n' + MODEL, ["server.port", "between 1 and 65535"]),
    ('command = "serve"\n' + MODEL + 'dtype = "f8"\n', ["models[0].dtype", '"bf16"']),
    ('command = "serve"\n' + MODEL + '[models.device]\ncpu = "yes"\n', ["models[0].device.cpu", "true or false"]),
    ('command = "serve"\n', ["no models"]),
    ('command = "walk"\n' + MODEL, ["`command`", "'walk'"]),
    ('command = "serve"\ndefault_model_id = "x/y"\n' + MODEL, ["default_model_id 'x/y'", "some/model"]),
    ('command = "run"\n' + MODEL + MODEL.replace("some", "other"), ["one model", "2"]),
    ('command = "serve"\n' + MODEL + MODEL, ["appears twice"]),
    ('command = "serve"\n[global]\ntoken_source = "magic"\n' + MODEL, ["global.token_source", "magic"]),
    ('command = "serve"\n[paged_attn]\ncontext_len = 4096\nmemory_mb = 100\n' + MODEL, ["mutually exclusive"]),
    ('command = "serve"\n' + MODEL + '[models.adapter]\nlora = "my-lora"\n', ["--lora", "not implemented yet"]),
    ('command = "serve"\n' + MODEL + '[models.quantization]\nin_situ_quant = "q7k"\n', ["Unknown --isq", "q7k"]),
], ids=["toml", "kind", "model_id", "no-kind", "unknown-key", "type", "range", "choice", "bool", "no-models",
        "command", "default", "run-two", "twice", "token-source", "pa-budgets", "unbuilt", "bad-isq"])
def test_bad_files_are_one_line_exit_2(capsys, tmp_path, text, expected):
    line = config_error(capsys, tmp_path, text)
    for part in expected:
        assert part in line, (part, line)


def test_missing_file(capsys, tmp_path):
    code, out, err = cli(capsys, "from-config", "--file", str(tmp_path / "nope.toml"))
    assert code == 2 and err.startswith("error: ") and "nope.toml" in err
