"""`mistralrs login`: save a Hugging Face token where huggingface_hub looks for it.

The file is huggingface_hub's own `HF_TOKEN_PATH` ($HF_HOME/token unless
HF_TOKEN_PATH says otherwise), so `--token-source cache` (the default), the
`hf` CLI and every huggingface_hub download use it. The token is not checked
online here: the hub may be unreachable, and `mistralrs doctor` checks it.
"""

from __future__ import annotations

import getpass
import os
import sys
import tempfile
from typing import Annotated

import typer
from huggingface_hub import constants

from mistralrs.cli.options import GLOBAL, Options, with_options
from mistralrs.errors import UserError

PROMPT = "Hugging Face token (input is hidden): "


@with_options(GLOBAL)
def login(
    token: Annotated[str | None, typer.Option(
        "--token", metavar="TOKEN", help="Provide the token directly (non-interactive).")] = None,
    *,
    opts: Options,
) -> None:
    """Authenticate with the Hugging Face Hub by saving your token to the local cache."""
    token = _clean(_ask() if token is None else token)
    path = constants.HF_TOKEN_PATH
    save_token(token, path)
    typer.echo(f"Token saved to {path}.")
    typer.echo("It was not checked online; run `mistralrs doctor` to verify it.")
    if os.environ.get("HF_TOKEN"):
        # huggingface_hub prefers the environment variable over the file.
        typer.echo("Note: HF_TOKEN is set in this environment and takes precedence over the saved token.", err=True)


def _ask() -> str:
    if not sys.stdin.isatty():
        # Piped (`echo $TOKEN | mistralrs login`): read one line, no prompt and no
        # getpass warning about echo, which cannot happen without a terminal.
        return sys.stdin.readline()
    try:
        return getpass.getpass(PROMPT)
    except EOFError:
        return ""  # stdin closed before a line: no token, reported as such below
    except KeyboardInterrupt:
        raise typer.Abort() from None


def _clean(token: str) -> str:
    token = token.strip()
    if not token:
        raise UserError("No token given; paste the token from https://huggingface.co/settings/tokens, "
                        "or pass --token TOKEN.")
    if any(ch.isspace() for ch in token):
        raise UserError("The token contains whitespace; paste it as one word (tokens look like hf_...).")
    return token


def save_token(token: str, path: str) -> None:
    """Write `token` to `path` with mode 0600, atomically: a crash never leaves half a token."""
    folder = os.path.dirname(path) or "."
    try:
        os.makedirs(folder, exist_ok=True)
        # mkstemp creates the file 0600 from the start, so the token is never readable by others.
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".token-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(token)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise UserError(f"Cannot write the token to {path} ({exc.strerror}); "
                        "set HF_HOME to a writable folder.") from None
