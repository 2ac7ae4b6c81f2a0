"""Writing the chat: the streamed answer (thinking in gray first), notes and errors.

Interactive (stdin a terminal): everything goes to the terminal, notes dim.
Scripted (stdin piped): stdout carries only the answers, one per prompt, so a
script can read them; notes and the speed line go to stderr.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from mistralrs.engine.chat_template import ThinkingStream

DIM = "\033[2m"
RESET = "\033[0m"

# C0/C1 control characters other than newline and tab: a model's output must not be
# able to move the cursor, clear the screen or retitle the terminal.
_CONTROL = {c: None for c in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)] if c not in (0x09, 0x0A)}


class ChatOutput:
    def __init__(self, interactive: bool, out: TextIO | None = None, err: TextIO | None = None,
                 color: bool | None = None):
        self.interactive = interactive
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        if color is None:
            color = self.out.isatty() and "NO_COLOR" not in os.environ
        self.color = color
        self._sanitize = self.out.isatty()
        self._notes = self.out if interactive else self.err

    def _dim(self, text: str) -> str:
        return f"{DIM}{text}{RESET}" if self.color and text else text

    def _clean(self, text: str) -> str:
        return text.translate(_CONTROL) if self._sanitize else text

    def content(self, text: str) -> None:
        self.out.write(self._clean(text))
        self.out.flush()

    def reasoning(self, text: str) -> None:
        self.out.write(self._dim(self._clean(text)))
        self.out.flush()

    def end_answer(self) -> None:
        self.out.write("\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """Information about the chat (command results, speed): dim, not part of any answer."""
        self._notes.write(self._dim(text) + "\n")
        self._notes.flush()

    def error(self, text: str) -> None:
        self.out.flush()
        self.err.write(f"error: {text}\n")
        self.err.flush()


class AnswerView:
    """Shows one streamed answer: the model's thinking dim, then the answer itself.

    `starts_in_reasoning`: the prompt already opened `<think>`, so the output holds
    only the closing `</think>` (Qwen3 and DeepSeek-R1 templates do this).
    """

    def __init__(self, output: ChatOutput, starts_in_reasoning: bool = False):
        self.output = output
        self.stream = ThinkingStream(starts_in_reasoning=starts_in_reasoning)
        self.reasoning: list[str] = []
        self.content: list[str] = []

    def feed(self, text: str) -> None:
        self._show(self.stream.feed(text))

    def finish(self) -> tuple[str | None, str]:
        """Flush what was held back; returns (reasoning or None, answer)."""
        self._show(self.stream.finish())
        reasoning = "".join(self.reasoning) if self.stream.saw_reasoning else None
        return reasoning, "".join(self.content)

    def _show(self, pieces: list[tuple[str, str]]) -> None:
        for kind, text in pieces:
            if kind == "reasoning":
                self.output.reasoning(text)
                self.reasoning.append(text)
            else:
                if self.reasoning and not self.content:
                    self.output.content("\n\n")  # the thinking block ends; the answer starts below it
                self.output.content(text)
                self.content.append(text)
