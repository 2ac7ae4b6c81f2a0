r"""The backslash commands of the interactive chat: parsing and validating them.

Only lines that start with a known command are commands (as in mistral.rs); any
other line, backslash or not, goes to the model.
"""

from __future__ import annotations

import math

HELP = r"""Commands:
  \help                 Show this help
  \exit                 Quit (Ctrl-D does too)
  \system <message>     Add a system message without running the model
  \clear                Clear the chat history
  \temperature <float>  Set the sampling temperature (0.0 to 2.0; 0 is greedy)
  \topk <int>           Set top-k sampling (> 0)
  \topp <float>         Set top-p sampling (greater than 0, at most 1)
Ctrl-C stops an answer (the part shown stays in the history) or clears the line."""

COMMANDS = ("help", "exit", "system", "clear", "temperature", "topk", "topp")


class CommandError(ValueError):
    """A command with a bad argument: the message is shown and the chat goes on."""


def split_command(line: str) -> tuple[str, str] | None:
    r"""`\name rest` -> (name, rest) when name is a command; None for a line meant for the model."""
    if not line.startswith("\\"):
        return None
    name, _, rest = line[1:].partition(" ")
    name = name.strip()
    if name not in COMMANDS:
        return None
    return name, rest.strip()


def _number(text: str, kind: type, usage: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise CommandError(f"{usage}; {text!r} is not a number." if text else f"{usage}.") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise CommandError(f"{usage}; got {text}.")
    return value


def parse_temperature(text: str) -> float:
    usage = r"\temperature takes a number from 0.0 to 2.0"
    value = _number(text, float, usage)
    if not 0.0 <= value <= 2.0:
        raise CommandError(f"{usage}; {value} is out of range.")
    return value


def parse_top_k(text: str) -> int:
    usage = r"\topk takes a whole number greater than 0"
    value = _number(text, int, usage)
    if value <= 0:
        raise CommandError(f"{usage}; {value} is out of range.")
    return value


def parse_top_p(text: str) -> float:
    usage = r"\topp takes a number greater than 0.0 and at most 1.0"
    value = _number(text, float, usage)
    if not 0.0 < value <= 1.0:
        raise CommandError(f"{usage}; {value} is out of range.")
    return value
