"""`mistralrs completions <shell>`: scripts that install and complete commands and options.

bash is exercised for real: the script is sourced and its completion function
called the way bash calls it on TAB. Elvish runs too where it is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)  # the venv's bin: the `mistralrs` console script the scripts call back


def completions(shell: str) -> str:
    result = subprocess.run([sys.executable, "-m", "mistralrs.cli.main", "completions", shell], text=True,
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def bash_complete(script: str, words: list[str]) -> list[str]:
    """What bash would offer after the TAB at the end of `words`."""
    if shutil.which("mistralrs", path=BIN) is None:
        pytest.skip("the mistralrs console script is not installed next to this Python")
    cword = len(words) - 1
    program = f"""
{script}
COMP_WORDS=({" ".join(f"'{w}'" for w in words)})
COMP_CWORD={cword}
_mistralrs_completion mistralrs
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    result = subprocess.run(["bash", "--norc", "-c", program], text=True, capture_output=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.fixture(scope="module")
def bash_script() -> str:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    return completions("bash")


def test_bash_completes_commands(bash_script):
    assert bash_complete(bash_script, ["mistralrs", "r"]) == ["run"]
    offered = bash_complete(bash_script, ["mistralrs", ""])
    assert {"run", "serve", "bench", "completions", "cache"} <= set(offered)


def test_bash_completes_options(bash_script):
    assert set(bash_complete(bash_script, ["mistralrs", "run", "--en"])) == {"--enable-thinking", "--enable-search"}
    assert bash_complete(bash_script, ["mistralrs", "run", "-m", "x", "--paged-attn", ""]) == ["auto", "on", "off"]
    assert bash_complete(bash_script, ["mistralrs", "cache", "d"]) == ["delete"]


def test_bash_script_registers_itself(bash_script):
    assert "complete -o default -F _mistralrs_completion mistralrs" in bash_script


@pytest.mark.parametrize("shell, marker", [
    ("zsh", "compdef _mistralrs_completion mistralrs"),
    ("fish", "complete --command mistralrs"),
    ("powershell", "Register-ArgumentCompleter -Native -CommandName mistralrs"),
    ("elvish", "set edit:completion:arg-completer[mistralrs]"),
])
def test_other_shells(shell, marker):
    assert marker in completions(shell)


def test_elvish_script_walks_the_command_tree():
    script = completions("elvish")
    for path in ("'mistralrs'", "'mistralrs;run'", "'mistralrs;cache;delete'", "'mistralrs;completions'"):
        assert f"&{path}=" in script
    assert "cand '--enable-thinking'" in script and "cand 'vision'" in script


@pytest.mark.skipif(shutil.which("elvish") is None, reason="elvish is not installed")
def test_elvish_script_runs(tmp_path):
    # Outside an interactive shell there is no `edit:` module: bind the completer to a variable
    # and make each candidate a plain value, then call it as the line editor would.
    script = completions("elvish").replace("set edit:completion:arg-completer[mistralrs] =", "var completer =")
    script = "\n".join("        put $text" if "edit:complex-candidate" in line else line
                       for line in script.splitlines())
    path = tmp_path / "complete.elv"
    # Echo the candidates as bytes: elvish prints value outputs on their own schedule.
    calls = ["mistralrs r", "mistralrs run -m x --en"]
    path.write_text(script + "".join(f"\necho (str:join ' ' [($completer {words})])" for words in calls) + "\n")
    result = subprocess.run(["elvish", "-norc", str(path)], text=True, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    top, run = (line.split() for line in result.stdout.splitlines())
    assert "run" in top and "serve" in top
    assert "--enable-thinking" in run and "vision" in run
