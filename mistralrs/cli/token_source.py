"""--token-source: where the Hugging Face token comes from.

The form is checked when the command line is parsed; the token itself is read
(environment variable, file) only when a command needs the hub, so `doctor`
does not fail over a token file it never uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import typer

from mistralrs.errors import UserError

FORMS = "cache, none, literal:<token>, env:<VAR> or path:<file>"


@dataclass(frozen=True)
class TokenSource:
    kind: str  # cache | none | literal | env | path
    value: str = ""

    def resolve(self) -> str | bool | None:
        """The `token=` to give huggingface_hub: a token string, None or False.

        None lets huggingface_hub find the cached token (`$HF_HOME/token`, as
        `mistralrs login` / `huggingface-cli login` store it); False sends none.
        """
        if self.kind == "cache":
            return None
        if self.kind == "none":
            return False
        if self.kind == "literal":
            return self.value
        if self.kind == "env":
            token = os.environ.get(self.value, "").strip()
            if not token:
                raise UserError(f"--token-source env:{self.value}: the environment variable {self.value} "
                                "is not set or empty; export it, or use another token source.")
            return token
        try:
            with open(os.path.expanduser(self.value), encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise UserError(f"--token-source path:{self.value}: cannot read the token file ({exc.strerror}).") from None
        if not token:
            raise UserError(f"--token-source path:{self.value}: the token file is empty.")
        return token


DEFAULT_TOKEN_SOURCE = TokenSource("cache")


def parse_token_source(text: str | TokenSource) -> TokenSource:
    """Parse the option's value; a malformed one is a usage error (exit 2)."""
    if isinstance(text, TokenSource):
        return text
    if text in ("cache", "none"):
        return TokenSource(text)
    kind, colon, value = text.partition(":")
    if not colon or kind not in ("literal", "env", "path"):
        raise typer.BadParameter(f"{text!r} is not a token source; use {FORMS}.")
    if not value:
        raise typer.BadParameter(f"{text!r} names no {'token' if kind == 'literal' else kind}; use {FORMS}.")
    return TokenSource(kind, value)
