"""`mistralrs login` writes $HF_HOME/token (mode 0600) and `--token-source cache` then finds it.

The CLI runs in a subprocess (or a pty, for the hidden prompt) with a temporary
HF_HOME: huggingface_hub reads HF_HOME at import time, and the user's real
token file must never be touched. Nothing here contacts the hub.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pexpect
import pytest

CLI = [sys.executable, "-m", "mistralrs.cli.main"]


def clean_env(hf_home) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TERM="dumb")
    return env


def login(hf_home, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "login", *args], env=clean_env(hf_home), input=stdin, capture_output=True,
                          text=True, timeout=60)


def assert_saved(hf_home, token: str) -> None:
    path = hf_home / "token"
    assert path.read_text() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_token_option_writes_the_token_file(tmp_path):
    home = tmp_path / "not" / "yet" / "there"  # the folder is created
    done = login(home, "--token", "hf_option_token")
    assert done.returncode == 0, done.stderr
    assert_saved(home, "hf_option_token")
    assert str(home / "token") in done.stdout and "mistralrs doctor" in done.stdout


def test_overwrites_a_previous_token_and_keeps_mode_0600(tmp_path):
    home = tmp_path / "hf"
    home.mkdir()
    (home / "token").write_text("hf_old")
    os.chmod(home / "token", 0o644)
    assert login(home, "--token", "hf_new").returncode == 0
    assert_saved(home, "hf_new")


def test_hidden_prompt_on_a_terminal(tmp_path):
    home = tmp_path / "hf"
    child = pexpect.spawn(CLI[0], [*CLI[1:], "login"], env=clean_env(home), encoding="utf-8", timeout=30)
    child.expect("token \\(input is hidden\\): ")
    child.sendline("  hf_typed_secret  ")
    child.expect("Token saved")
    echoed = child.before
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "hf_typed_secret" not in echoed  # getpass turned echo off
    assert_saved(home, "hf_typed_secret")


def test_piped_stdin(tmp_path):
    home = tmp_path / "hf"
    done = login(home, stdin="hf_piped\n")
    assert done.returncode == 0, done.stderr
    assert_saved(home, "hf_piped")


@pytest.mark.parametrize("args, stdin", [(["--token", ""], None), (["--token", "   "], None), ([], "\n"), ([], ""),
                                         (["--token", "hf_a b"], None)])
def test_empty_or_malformed_token_exits_2(tmp_path, args, stdin):
    home = tmp_path / "hf"
    done = login(home, *args, stdin=stdin)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert not (home / "token").exists()


def test_token_source_cache_resolves_to_the_saved_token(tmp_path):
    home = tmp_path / "hf"
    assert login(home, "--token", "hf_cached_token").returncode == 0
    # What run/serve/bench do with --token-source cache: resolve() leaves it to huggingface_hub.
    code = ("from huggingface_hub import get_token\n"
            "from mistralrs.cli.token_source import parse_token_source\n"
            "token = parse_token_source('cache').resolve()\n"
            "print(get_token() if token is None else token)\n")
    done = subprocess.run([sys.executable, "-c", code], env=clean_env(home), capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "hf_cached_token", done.stderr
    # And the doctor (offline) sees a token through the same default source.
    doctor = subprocess.run([*CLI, "doctor", "--json"], env=clean_env(home), capture_output=True, text=True,
                            timeout=60)
    check = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "Hugging Face token")
    assert check["status"] == "warn" and "could not be verified" in check["message"]
