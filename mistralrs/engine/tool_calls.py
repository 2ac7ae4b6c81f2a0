"""Tool calls in model output: the Hermes/Qwen `<tool_call>` format and the Llama 3 JSON format.

Hermes / Qwen (anywhere in the answer, any number of times)::

    Some text.
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Llama 3 (the whole answer, optionally after `<|python_tag|>`): one JSON object
`{"name": ..., "parameters": {...}}` (or `"arguments"`), several separated by
whitespace or `;`, or a JSON array of them.

A block that does not hold a valid call (bad JSON, no name, a name that is not
one of the request's tools, an unclosed tag) stays in the content as it was
written: nothing is lost and nothing raises. Whitespace between a recognised
call and the content around it is dropped, except between content before a call
and content after it, which keeps the whitespace after the call. `ToolCallStream` does the work as text arrives;
`parse_tool_calls` runs it over a whole answer, so both give the same result.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

from mistralrs.engine.stop import held_prefix_length

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
PYTHON_TAG = "<|python_tag|>"


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON text, as the OpenAI API sends it
    id: str = field(default_factory=new_call_id)

    def openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


ToolPiece = tuple[Literal["content"], str] | tuple[Literal["tool_call"], ToolCall]


def _call_from(value, names: Collection[str] | None) -> ToolCall | None:
    """A call from one decoded JSON value, or None when it is not one."""
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    if not isinstance(name, str) or not name or (names is not None and name not in names):
        return None
    arguments = value.get("arguments", value.get("parameters"))
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):  # some models write the arguments as a JSON string already
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(name=name, arguments=json.dumps(arguments, ensure_ascii=False))


def _hermes_call(body: str, names: Collection[str] | None) -> ToolCall | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return _call_from(value, names)


def _json_calls(text: str, names: Collection[str] | None) -> list[ToolCall] | None:
    """The Llama 3 format: the whole text is calls (objects, `;`-separated objects, or an array); else None."""
    text = text.strip()
    if text.startswith(PYTHON_TAG):
        text = text[len(PYTHON_TAG) :].lstrip()
    decoder = json.JSONDecoder()
    values, position = [], 0
    while position < len(text):
        try:
            value, position = decoder.raw_decode(text, position)
        except ValueError:
            return None
        values.extend(value if isinstance(value, list) else [value])
        while position < len(text) and (text[position].isspace() or text[position] == ";"):
            position += 1
    calls = [_call_from(value, names) for value in values]
    if not calls or any(call is None for call in calls):
        return None
    return calls



class ToolCallStream:
    """Splits streamed answer text into content and tool calls.

    Content streams as it comes, except what may still turn out to belong to a
    call: trailing whitespace and a partial `<tool_call>` tag. From `<tool_call>`
    on, text is held back until `</tool_call>` closes the block; an answer that
    starts with `{` or `<|python_tag|>` (the Llama 3 format) is held back whole
    until `finish()`.

    `names`: the tool names a call may use (None: any name).
    """

    def __init__(self, names: Collection[str] | None = None, *, json_format: bool = True):
        self.names = set(names) if names is not None else None
        self._state = "start" if json_format else "content"
        self._buffer = ""
        self._gap = ""  # whitespace dropped before an open <tool_call>, restored if the block is invalid
        self._after_call = False  # whitespace right after a call is dropped, unless content follows it
        self._content_sent = False
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> list[ToolPiece]:
        """Feed the next chunk; return the pieces that are now certain."""
        self._buffer += text
        pieces: list[ToolPiece] = []
        while getattr(self, f"_step_{self._state}")(pieces):
            pass
        return _merge(pieces)

    def finish(self) -> list[ToolPiece]:
        """End of output: release what was held back."""
        pieces: list[ToolPiece] = []
        held, self._buffer = self._buffer, ""
        if self._state == "json":
            calls = _json_calls(held, self.names)
            if calls is not None:
                for call in calls:
                    self._emit_call(pieces, call)
            else:  # not a Llama call after all: read it as ordinary text (which may hold <tool_call> blocks)
                plain = ToolCallStream(self.names, json_format=False)
                pieces = plain.feed(held) + plain.finish()
                for kind, value in pieces:
                    if kind == "tool_call":
                        self.calls.append(value)
        elif self._state == "call":  # an unclosed block, e.g. cut off by max_tokens
            pieces.append(("content", self._gap + TOOL_CALL_OPEN + held))
        elif held and not (self._after_call and not held.strip()):
            pieces.append(("content", held))
        self._state = "done"
        return _merge(pieces)

    def _send(self, pieces: list, text: str) -> None:
        self._content_sent = True
        pieces.append(("content", text))

    def _emit_call(self, pieces: list, call: ToolCall) -> None:
        self.calls.append(call)
        pieces.append(("tool_call", call))

    # Each step consumes what it can from the buffer; it returns True when it should run again.

    def _step_start(self, pieces: list) -> bool:
        stripped = self._buffer.lstrip()
        if not stripped or (PYTHON_TAG.startswith(stripped) and stripped != PYTHON_TAG):
            return False  # nothing yet, or a partial <|python_tag|>: wait for more
        self._state = "json" if stripped.startswith(("{", PYTHON_TAG)) else "content"
        return True

    def _step_json(self, pieces: list) -> bool:
        return False  # held until finish()

    def _step_content(self, pieces: list) -> bool:
        if self._after_call:
            if not self._content_sent:  # content that starts after a call loses its leading whitespace
                self._buffer = self._buffer.lstrip()
            if not self._buffer.strip():
                return False
            self._after_call = False
        opened = self._buffer.find(TOOL_CALL_OPEN)
        if opened != -1:
            before = self._buffer[:opened]
            ready = before.rstrip()
            if ready:
                self._send(pieces, ready)
            self._gap = before[len(ready) :]
            self._buffer = self._buffer[opened + len(TOOL_CALL_OPEN) :]
            self._state = "call"
            return True
        held = held_prefix_length(self._buffer, TOOL_CALL_OPEN)
        body, tail = self._buffer[: len(self._buffer) - held], self._buffer[len(self._buffer) - held :]
        ready = body.rstrip()  # trailing whitespace may turn out to precede <tool_call>
        if ready:
            self._send(pieces, ready)
        self._buffer = body[len(ready) :] + tail
        return False

    def _step_call(self, pieces: list) -> bool:
        closed = self._buffer.find(TOOL_CALL_CLOSE)
        if closed == -1:
            return False
        body = self._buffer[:closed]
        self._buffer = self._buffer[closed + len(TOOL_CALL_CLOSE) :]
        self._state = "content"
        call = _hermes_call(body, self.names)
        if call is None:
            self._send(pieces, self._gap + TOOL_CALL_OPEN + body + TOOL_CALL_CLOSE)
        else:
            self._emit_call(pieces, call)
            self._after_call = True
        self._gap = ""
        return True

    def _step_done(self, pieces: list) -> bool:
        return False


def _merge(pieces: list[ToolPiece]) -> list[ToolPiece]:
    merged: list = []
    for kind, value in pieces:
        if kind == "content" and merged and merged[-1][0] == "content":
            merged[-1] = ("content", merged[-1][1] + value)
        elif kind != "content" or value:
            merged.append((kind, value))
    return merged


def parse_tool_calls(text: str, names: Collection[str] | None = None) -> tuple[str, list[ToolCall]]:
    """(content, calls) of a whole answer; content is the text outside the recognised calls."""
    stream = ToolCallStream(names)
    pieces = stream.feed(text) + stream.finish()
    content = "".join(value for kind, value in pieces if kind == "content")
    return content, stream.calls
