r"""The interactive chat of `mistralrs run`: read a line, run a command or stream an answer.

Ctrl-C during an answer stops it: the part already shown stays in the history
(it is what the user saw, and "go on" should be able to refer to it); an answer
stopped before any text drops the question too. A second Ctrl-C while the
first is being handled interrupts at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from mistralrs.cli.chat_commands import (
    HELP,
    CommandError,
    parse_temperature,
    parse_top_k,
    parse_top_p,
    split_command,
)
from mistralrs.cli.chat_output import AnswerView, ChatOutput
from mistralrs.cli.line_input import LineReader
from mistralrs.cli.request_log import RequestLog
from mistralrs.engine.params import Completion, SamplingParams
from mistralrs.errors import UserError

if TYPE_CHECKING:
    from mistralrs.engine.api import LLM


@contextlib.contextmanager
def interrupts_as_flag() -> Iterator[Callable[[], bool]]:
    """While inside, the first Ctrl-C only sets a flag the caller polls; a second one raises.

    Raising KeyboardInterrupt at an arbitrary point of the engine could leave its
    lock or cache half-updated; a flag lets the answer stop between two tokens.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    presses = 0

    def on_interrupt(signum, frame):
        nonlocal presses
        presses += 1
        if presses > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield lambda: presses > 0
    finally:
        signal.signal(signal.SIGINT, previous)


class ChatSession:
    def __init__(self, llm: LLM, output: ChatOutput, *, enable_thinking: bool = False,
                 seed: int | None = None, log: RequestLog | None = None):
        self.llm = llm
        self.output = output
        self.log = log or RequestLog(None)
        self.messages: list[dict] = []
        self.sampling = SamplingParams(seed=seed)
        thinks = llm.template is not None and llm.template.thinks
        # Thinking templates default to thinking; without --enable-thinking ask them not to.
        self.template_kwargs = {"enable_thinking": enable_thinking} if thinks or enable_thinking else {}

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, reader: LineReader) -> None:
        while True:
            try:
                line = reader.read()
            except KeyboardInterrupt:
                self.output.content("\n")  # Ctrl-C at the prompt: drop the line, ask again
                continue
            if line is None:
                return
            if not self.handle(line):
                return

    def handle(self, line: str) -> bool:
        """Act on one line; False when the user asked to quit."""
        command = split_command(line.strip())
        if command is not None:
            return self.command(*command)
        if line.strip():
            self.answer(line)
        return True

    # ---- commands ------------------------------------------------------------------------------
    def command(self, name: str, argument: str) -> bool:
        try:
            if name == "exit":
                return False
            if name == "help":
                self.output.note(HELP)
            elif name == "system":
                if not argument:
                    raise CommandError(r"\system takes the message to add, e.g. \system Answer briefly.")
                self.messages.append({"role": "system", "content": argument})
                self.output.note("Added a system message.")
            elif name == "clear":
                self.messages.clear()
                self.output.note("Cleared the chat history.")
            elif name == "temperature":
                self.sampling.temperature = parse_temperature(argument)
                self.output.note(f"Temperature set to {self.sampling.temperature}.")
            elif name == "topk":
                self.sampling.top_k = parse_top_k(argument)
                self.output.note(f"Top-k set to {self.sampling.top_k}.")
            elif name == "topp":
                self.sampling.top_p = parse_top_p(argument)
                self.output.note(f"Top-p set to {self.sampling.top_p}.")
        except CommandError as exc:
            self.output.error(str(exc))
        return True

    # ---- answers -------------------------------------------------------------------------------
    def answer(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        params = dataclasses.replace(self.sampling)
        try:
            stream = self.llm.stream_chat(self.messages, params, **self.template_kwargs)
        except UserError as exc:  # a template that refuses the conversation, a prompt too long...
            self.messages.pop()
            self.output.error(exc.message)
            return
        self.log.request(model=self.llm.model_id, messages=self.messages, sampling=params,
                         template_kwargs=self.template_kwargs)
        view = AnswerView(self.output, stream.opens_thinking)
        with interrupts_as_flag() as interrupted:
            try:
                for chunk in stream:
                    view.feed(chunk.text)
                    if interrupted():
                        break
            except KeyboardInterrupt:
                pass
            finally:
                stream.close()
        reasoning, content = view.finish()
        self._remember(reasoning, content)
        completion = stream.completion
        self.log.response(model=self.llm.model_id, text=completion.text, reasoning=reasoning, content=content,
                          finish_reason=completion.finish_reason, usage=completion.usage, timing=completion.timing)
        self.output.end_answer()
        self.output.note(speed_line(completion))

    def _remember(self, reasoning: str | None, content: str) -> None:
        if not content and not reasoning:
            self.messages.pop()  # nothing was said: forget the question too
            return
        message = {"role": "assistant", "content": content}
        if reasoning:
            message["reasoning_content"] = reasoning  # thinking templates decide whether to show it again
        self.messages.append(message)


def speed_line(completion: Completion) -> str:
    tokens = completion.usage.completion_tokens
    tok_s = completion.timing.decode_tok_s(tokens)
    ttft_ms = completion.timing.ttft_s * 1000
    stopped = ", stopped" if completion.finish_reason == "cancelled" else ""
    return f"[{tokens} tokens, {tok_s:.1f} tok/s, TTFT {ttft_ms:.0f} ms{stopped}]"
