"""Reading the user's lines: readline editing and a saved history on a terminal, plain lines otherwise."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROMPT = "> "
HISTORY_LENGTH = 1000


def history_path() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "mistralrs" / "history"


def _import_readline():
    """Importing readline gives input() line editing; without it (Windows) input() still works."""
    try:
        import readline
    except ImportError:
        return None
    return readline


class LineReader:
    """`read()` returns the next line without its newline, or None at end of input.

    On a terminal Ctrl-C at the prompt raises KeyboardInterrupt (the caller clears
    the line and asks again) and Ctrl-D ends input.
    """

    def __init__(self, interactive: bool, history: Path | None = None):
        self.interactive = interactive
        self.history = history
        self._readline = _import_readline() if interactive else None
        if self._readline is not None and history is not None:
            self._readline.set_history_length(HISTORY_LENGTH)
            try:
                self._readline.read_history_file(history)
            except OSError:
                pass  # no history yet (or unreadable): start afresh

    def read(self) -> str | None:
        if not self.interactive:
            line = sys.stdin.readline()
            return line.rstrip("\r\n") if line else None
        try:
            line = input(PROMPT)
        except EOFError:
            print()
            return None
        self._remember(line)
        return line

    def _remember(self, line: str) -> None:
        if self._readline is None or self.history is None or not line.strip():
            return
        try:
            self.history.parent.mkdir(parents=True, exist_ok=True)
            if not self.history.exists():
                self.history.touch()
            self._readline.append_history_file(1, self.history)
        except (OSError, AttributeError):
            pass  # history is a convenience; never fail the chat over it (libedit lacks append)
