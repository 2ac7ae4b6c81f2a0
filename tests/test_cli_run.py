r"""`mistralrs run` end to end on a tiny model: a chat in a pseudo-terminal, and piped prompts.

The tiny random model never emits EOS on purpose, so every answer runs to the
context limit: --max-seq-len keeps answers short, or (large) long enough to
interrupt with Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pexpect
import pytest

from mistralrs.cli.chat_output import DIM
from model_fixtures import CHATML, CHATML_THINKING

# The prompt at the start of a line: help text contains "> " too (e.g. "<0..2> "), and a
# test that waited on that would type into the wrong prompt.
PROMPT = "\r\n> "
SPEED = r"\[\d+ tokens, [\d.]+ tok/s, TTFT \d+ ms(, stopped)?\]"
# A DeepSeek-R1-style template: with enable_thinking it opens the thinking block in the prompt.
OPENS_THINKING = CHATML.replace(
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking %}{{ '<think>\n' }}{% else %}{{ '<think>\n\n</think>\n\n' }}{% endif %}{% endif %}",
)


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> str:
    return tiny_model_dir("qwen3")


def with_template(source: str, folder, template: str) -> str:
    shutil.copytree(source, folder)
    path = os.path.join(folder, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config["chat_template"] = template
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    return str(folder)


def cli_env(home) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), TERM="dumb", COLUMNS="200")  # history goes to home/.cache/mistralrs
    return env


def command(model: str, backend: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "mistralrs.cli.main", "run", "-m", model, "--cpu", "--backend", backend, *args]


def spawn(model: str, backend: str, home, *args: str) -> pexpect.spawn:
    argv = command(model, backend, *args)
    child = pexpect.spawn(argv[0], argv[1:], env=cli_env(home), encoding="utf-8", timeout=60,
                          dimensions=(50, 200))
    child.expect(r"Type \\help")
    child.expect_exact(PROMPT)
    return child


def ask(child: pexpect.spawn, line: str) -> str:
    """Send a prompt; return the streamed answer once its speed line has come."""
    child.sendline(line)
    child.expect_exact(line + "\r\n")
    child.expect(SPEED)
    answer = child.before
    child.expect_exact(PROMPT)
    return answer


def say(child: pexpect.spawn, line: str, reply: str) -> None:
    child.sendline(line)
    child.expect_exact(reply)
    child.expect_exact(PROMPT)


def quit_with_exit(child: pexpect.spawn) -> str:
    child.sendline("\\exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    return child.before


def test_interactive_chat_and_commands(model, backend, tmp_path):
    child = spawn(model, backend, tmp_path, "--max-seq-len", "200")
    say(child, "\\system Always answer as a pirate.", "Added a system message.")
    say(child, "\\temperature 0.7", "Temperature set to 0.7.")
    say(child, "\\topk 50", "Top-k set to 50.")
    say(child, "\\topp 0.9", "Top-p set to 0.9.")
    assert ask(child, "Hello!").strip()
    say(child, "\\clear", "Cleared the chat history.")
    say(child, "\\temperature 9", "out of range")
    assert ask(child, "Hello again").strip()  # the chat went on after the bad value
    say(child, "\\help", "\\system <message>")
    # Ctrl-C at the prompt drops the half-typed line; it is never answered.
    child.send("half a line")
    child.expect_exact("half a line")  # readline has the line: Ctrl-C now reaches it, not the tty queue
    child.sendcontrol("c")
    child.expect_exact(PROMPT)
    assert not re.search(SPEED, quit_with_exit(child))
    history = (tmp_path / ".cache" / "mistralrs" / "history").read_text()
    assert "\\temperature 0.7" in history and "Hello again" in history


def test_ctrl_c_stops_an_answer(model, backend, tmp_path):
    child = spawn(model, backend, tmp_path, "--max-seq-len", "100000")
    child.sendline("Tell me a very long story.")
    child.expect_exact("Tell me a very long story.\r\n")
    child.expect(r"[^\r\n]{40}")  # the answer is streaming
    child.sendcontrol("c")
    child.expect(r"stopped\]", timeout=30)
    child.expect_exact(PROMPT)
    child.sendcontrol("d")  # Ctrl-D quits
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_thinking_is_shown_dim(model, backend, tmp_path):
    folder = with_template(model, tmp_path / "thinker", OPENS_THINKING)
    child = spawn(folder, backend, tmp_path, "--max-seq-len", "80", "--enable-thinking")
    # The prompt opened <think> and the tiny model never closes it: all of the answer is thinking.
    assert ask(child, "What is 2+2?").startswith(DIM)
    quit_with_exit(child)


def test_without_enable_thinking_the_template_is_told_not_to_think(model, backend, tmp_path):
    folder = with_template(model, tmp_path / "qwen3-style", CHATML_THINKING)
    child = spawn(folder, backend, tmp_path, "--max-seq-len", "80")
    assert not ask(child, "What is 2+2?").startswith(DIM)
    quit_with_exit(child)


def run_piped(model: str, backend: str, home, stdin: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command(model, backend, "--max-seq-len", "64", *args), input=stdin.encode(),
                            capture_output=True, env=cli_env(home), timeout=120)
    # Decoded by hand: text mode would turn a "\r" the model wrote into "\n".
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    return result


def test_piped_prompts_print_answers(model, backend, tmp_path):
    result = run_piped(model, backend, tmp_path, "hi\n\\clear\n\\temperature 9\nhello\n\\exit\nnever asked\n")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) >= 2  # two answers, nothing else on stdout
    assert "out of range" in result.stderr
    assert len(re.findall(SPEED, result.stderr)) == 2


def test_log_records_requests_and_responses(model, backend, tmp_path):
    log = tmp_path / "requests.jsonl"
    result = run_piped(model, backend, tmp_path, "\\temperature 0.5\nhi\n", "--log", str(log), "--seed", "1")
    assert result.returncode == 0, result.stderr
    request, response = [json.loads(line) for line in log.read_text().splitlines()]
    assert request["type"] == "request" and request["messages"] == [{"role": "user", "content": "hi"}]
    assert request["sampling"]["temperature"] == 0.5
    assert response["type"] == "response" and response["text"] == result.stdout.rstrip("\n")
    assert response["usage"]["completion_tokens"] > 0 and response["finish_reason"] == "length"


def test_seed_makes_sampling_repeatable(model, backend, tmp_path):
    def sampled(seed: str) -> str:
        result = run_piped(model, backend, tmp_path, "\\temperature 1\nhi\n", "--seed", seed)
        assert result.returncode == 0, result.stderr
        return result.stdout

    first = sampled("11")
    assert first.strip() and sampled("11") == first
    assert sampled("12") != first
