"""Chat templates: render a conversation into the prompt text exactly as transformers does.

Chat templates are Jinja programs shipped with a model (or given by the user
with --chat-template / --jinja-explicit), so they are untrusted code: they run
in Jinja's immutable sandbox. The environment copies transformers'
`utils/chat_template_utils.py` (trim_blocks, lstrip_blocks, loopcontrols, the
`raise_exception` and `strftime_now` globals, a `tojson` filter that does not
escape HTML, a `namespace` that refuses underscore names) and so does the data
preparation (keys whose value is None are dropped, reasoning fields are
aliased), so a prompt here is byte-identical to `apply_chat_template`'s.

The thinking helpers split a reasoning model's `<think>…</think>` block from
its answer, whole (`split_thinking`) or while streaming (`ThinkingStream`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.utils
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mistralrs.engine.stop import held_prefix_length
from mistralrs.engine.tokenizer import select_chat_template
from mistralrs.errors import TemplateError

if TYPE_CHECKING:
    from mistralrs.engine.tokenizer import Tokenizer

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# The names a message's reasoning may come under; the first is the one templates read.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")

_TEMPLATE_FIX = "pass a working template with --chat-template FILE or --jinja-explicit FILE"


class TemplateRenderError(TemplateError):
    """A template that failed while rendering; `template_message` is its own words, without our advice."""

    def __init__(self, message: str, template_message: str):
        super().__init__(message, param="messages")
        self.template_message = template_message


class _TemplateRaised(TemplateError):
    """Raised by the template's own `raise_exception(message)` call."""


def _raise_exception(message: object) -> None:
    raise _TemplateRaised(str(message))


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Jinja's built-in tojson HTML-escapes (<, >, &, ') and takes no options; templates expect HF's.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    # `dict(...)` without exposing the dict type itself to attribute tricks.
    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    # A Jinja namespace that refuses underscore names, so templates cannot reach CPython internals.
    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}."
            )


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}` marks assistant text for training masks; rendering ignores it."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller):
        return caller()


def _make_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


_ENVIRONMENT = _make_environment()


def _plain_data(value: Any) -> Any:
    """Rebuild the template's input from JSON types only: the sandbox then sees no foreign methods."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain_data(k): _plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_data(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain_data(item) for item in value)
    if isinstance(value, np.generic):  # np.bool_(False) must not become a truthy placeholder
        return _plain_data(value.item())
    if callable(getattr(value, "model_dump", None)):  # pydantic models, e.g. parsed request bodies
        return _plain_data(value.model_dump())
    return f"<{type(value).__name__}>"


def _prepare_messages(messages: list) -> list[dict]:
    prepared = []
    for message in _plain_data(list(messages)):
        if not isinstance(message, dict):
            raise TemplateError(
                f"Each chat message must be an object with `role` and `content`, got {message!r}.",
                param="messages",
            )
        # OpenAI clients send `content: null` or `tool_calls: null`; templates handle a missing key
        # but would print "None", so (like transformers) drop the None values.
        message = {key: value for key, value in message.items() if value is not None}
        reasoning = next((message[key] for key in _REASONING_FIELDS if message.get(key) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        prepared.append(message)
    return prepared


class ChatTemplate:
    """One compiled chat template; `origin` names where it came from, for error messages."""

    def __init__(self, source: str, origin: str, special_tokens: Mapping[str, str] | None = None):
        self.source = source
        self.origin = origin
        # The tokenizer's named special tokens (bos_token, eos_token, ...), passed to every render
        # as transformers does; explicit render() arguments win.
        self.special_tokens = dict(special_tokens or {})
        try:
            syntax_tree = _ENVIRONMENT.parse(source)
            self._template = _ENVIRONMENT.from_string(syntax_tree)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"The chat template from {origin} has a Jinja syntax error on line {exc.lineno} of the template: "
                f"{exc.message}. Fix the template, or {_TEMPLATE_FIX}."
            ) from exc
        self._variables = frozenset(jinja2.meta.find_undeclared_variables(syntax_tree))

    @property
    def thinks(self) -> bool:
        """Whether the template knows about reasoning (reads `enable_thinking` or writes `<think>`)."""
        return "enable_thinking" in self._variables or THINK_OPEN in self.source

    @property
    def variables(self) -> frozenset[str]:
        """The names the template reads from its context (messages, tools, enable_thinking, ...)."""
        return self._variables

    def render(
        self,
        messages: list,
        *,
        add_generation_prompt: bool = True,
        tools: list | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt text for `messages`; extra keyword arguments (enable_thinking, ...) reach the template."""
        if not messages:
            raise TemplateError("The conversation is empty: send at least one message.", param="messages")
        context = dict(self.special_tokens)
        context.setdefault("bos_token", "")
        context.setdefault("eos_token", "")
        if bos_token is not None:
            context["bos_token"] = bos_token
        if eos_token is not None:
            context["eos_token"] = eos_token
        context.update(kwargs)
        context = _plain_data(context)
        documents = context.pop("documents", None)  # RAG templates read it; transformers passes None
        try:
            return self._template.render(
                messages=_prepare_messages(messages),
                tools=_plain_data(tools),
                documents=documents,
                add_generation_prompt=add_generation_prompt,
                **context,
            )
        except _TemplateRaised as exc:
            raise TemplateRenderError(
                f"{exc.message} (raised by the chat template from {self.origin}; fix the "
                f"conversation, or {_TEMPLATE_FIX})",
                exc.message,
            ) from None
        except TemplateError:
            raise
        except Exception as exc:  # a template is a program: any error in it is the template's, not ours
            where = _template_line(exc)
            raise TemplateRenderError(
                f"The chat template from {self.origin} failed{where}: {type(exc).__name__}: {exc}. "
                f"Check the messages (roles, content) against what the template expects, or {_TEMPLATE_FIX}.",
                str(exc),
            ) from exc

    def __repr__(self) -> str:
        return f"ChatTemplate(origin={self.origin!r}, thinks={self.thinks})"


def _template_line(exc: BaseException) -> str:
    # Jinja rewrites tracebacks so template frames carry the template line number.
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" on line {line}" if line is not None else ""


# ---- loading ---------------------------------------------------------------------------------------


def _read_text(path: str, option: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"Cannot read the chat template {path} given with {option}: {exc}.") from exc


def _template_from_json_file(path: str, option: str) -> str:
    text = _read_text(path, option)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TemplateError(
            f"The chat template file {path} given with {option} is not valid JSON (line {exc.lineno}, "
            f"column {exc.colno}: {exc.msg}). Fix the JSON, or pass the template as a .jinja file."
        ) from exc
    value = data.get("chat_template") if isinstance(data, dict) else None
    if isinstance(value, list):  # the named-templates form: take "default"
        value = select_chat_template(value)
    if not isinstance(value, str):
        raise TemplateError(
            f'The chat template file {path} given with {option} has no "chat_template" string. '
            'Write it as {"chat_template": "<jinja template>"}, or pass the template as a .jinja file.'
        )
    return value


def load_chat_template(
    model_dir: str | None,
    tokenizer: Tokenizer | None,
    chat_template: str | None = None,
    jinja_explicit: str | None = None,
) -> ChatTemplate | None:
    """The template to use: --jinja-explicit FILE, else --chat-template (file or literal), else the model's.

    Returns None when there is none at all (a base model); the caller decides whether that is an error.
    """
    special_tokens = tokenizer.special_tokens_map if tokenizer is not None else {}
    if jinja_explicit:
        if not os.path.isfile(jinja_explicit):
            raise TemplateError(
                f"The Jinja template {jinja_explicit} given with --jinja-explicit does not exist. "
                "Pass the path of a .jinja file."
            )
        source = _read_text(jinja_explicit, "--jinja-explicit")
        return ChatTemplate(source, jinja_explicit, special_tokens)

    if chat_template:
        if os.path.isfile(chat_template):
            if chat_template.lower().endswith(".json"):
                source = _template_from_json_file(chat_template, "--chat-template")
            else:
                source = _read_text(chat_template, "--chat-template")
            return ChatTemplate(source, chat_template, special_tokens)
        if "{%" in chat_template or "{{" in chat_template:
            # mistral.rs also takes the template itself as the option's value.
            return ChatTemplate(chat_template, "the --chat-template value", special_tokens)
        raise TemplateError(
            f"The chat template file {chat_template} given with --chat-template does not exist. "
            'Pass a .jinja file, a .json file with a "chat_template" key, or the template text itself.'
        )

    if tokenizer is not None and tokenizer.chat_template is not None:
        origin = tokenizer.chat_template_origin or f"the tokenizer of {model_dir}"
        return ChatTemplate(tokenizer.chat_template, origin, special_tokens)
    return None


# ---- thinking --------------------------------------------------------------------------------------

ThinkingKind = Literal["reasoning", "content"]


def prompt_opens_thinking(prompt: str) -> bool:
    """Whether the rendered prompt ends inside an open <think> block, so the output starts as reasoning."""
    opened = prompt.rfind(THINK_OPEN)
    return opened != -1 and prompt.rfind(THINK_CLOSE) < opened



class ThinkingStream:
    """Splits streamed model output into reasoning and content as text arrives.

    One thinking block is recognised: `<think>` at the very start of the output
    (after whitespace), or, with `starts_in_reasoning=True`, an output that
    starts inside a block the prompt opened and so holds only `</think>`.
    Whitespace around the reasoning and before the answer is dropped, so the
    pieces add up to exactly what `split_thinking` returns for the whole text.
    """

    def __init__(self, starts_in_reasoning: bool = False):
        self._state = "reasoning" if starts_in_reasoning else "start"
        self._buffer = ""  # text held back: a possible tag, or whitespace not yet known to matter
        self._reasoning_emitted = False  # leading whitespace of the reasoning is dropped until then
        self.saw_reasoning = starts_in_reasoning

    def feed(self, text: str) -> list[tuple[ThinkingKind, str]]:
        """Feed the next chunk; return the (kind, text) pieces that are now certain."""
        self._buffer += text
        pieces: list[tuple[ThinkingKind, str]] = []
        while True:
            progressed = getattr(self, f"_step_{self._state}")(pieces)
            if not progressed:
                return _merge(pieces)

    def finish(self) -> list[tuple[ThinkingKind, str]]:
        """End of output: release what was held back (an unclosed block counts as reasoning)."""
        pieces: list[tuple[ThinkingKind, str]] = []
        held, self._buffer = self._buffer, ""
        if self._state == "start":
            if held:
                pieces.append(("content", held))
        elif self._state == "reasoning":
            if held.strip():
                pieces.append(("reasoning", held.rstrip()))
        elif self._state == "answer":
            pass  # only whitespace before an answer that never came
        elif held:
            pieces.append(("content", held))
        self._state = "done"
        return pieces

    # Each step consumes what it can from the buffer; it returns True when the state changed.

    def _step_start(self, pieces: list) -> bool:
        stripped = self._buffer.lstrip()
        if stripped.startswith(THINK_OPEN):
            self._buffer = stripped[len(THINK_OPEN) :]
            self._state = "reasoning"
            self.saw_reasoning = True
            return True
        if THINK_OPEN.startswith(stripped):
            return False  # empty, whitespace, or a partial "<think>": wait for more
        self._state = "content"
        return True

    def _step_reasoning(self, pieces: list) -> bool:
        if not self._reasoning_emitted:
            self._buffer = self._buffer.lstrip()
        close = self._buffer.find(THINK_CLOSE)
        if close != -1:
            reasoning = self._buffer[:close].rstrip()
            if reasoning:
                pieces.append(("reasoning", reasoning))
            self._buffer = self._buffer[close + len(THINK_CLOSE) :]
            self._state = "answer"
            return True
        held = held_prefix_length(self._buffer, THINK_CLOSE)
        body, tail = self._buffer[: len(self._buffer) - held], self._buffer[len(self._buffer) - held :]
        ready = body.rstrip()  # trailing whitespace may turn out to precede </think>
        if ready:
            pieces.append(("reasoning", ready))
            self._reasoning_emitted = True
        self._buffer = body[len(ready) :] + tail
        return False

    def _step_answer(self, pieces: list) -> bool:
        self._buffer = self._buffer.lstrip()
        if self._buffer:
            self._state = "content"
            return True
        return False

    def _step_content(self, pieces: list) -> bool:
        if self._buffer:
            pieces.append(("content", self._buffer))
            self._buffer = ""
        return False

    def _step_done(self, pieces: list) -> bool:
        return False


def _merge(pieces: list[tuple[ThinkingKind, str]]) -> list[tuple[ThinkingKind, str]]:
    merged: list[tuple[ThinkingKind, str]] = []
    for kind, text in pieces:
        if merged and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return merged


def split_thinking(text: str, starts_in_reasoning: bool | None = None) -> tuple[str | None, str]:
    """(reasoning, content) of a whole answer; reasoning is None when there was no thinking block.

    `starts_in_reasoning=None` guesses: an output with `</think>` but no `<think>`
    before it started inside a block that the prompt opened.
    """
    if starts_in_reasoning is None:
        close = text.find(THINK_CLOSE)
        starts_in_reasoning = close != -1 and THINK_OPEN not in text[:close]
    stream = ThinkingStream(starts_in_reasoning=starts_in_reasoning)
    pieces = stream.feed(text) + stream.finish()
    reasoning = "".join(piece for kind, piece in pieces if kind == "reasoning")
    content = "".join(piece for kind, piece in pieces if kind == "content")
    return (reasoning if stream.saw_reasoning else None), content
