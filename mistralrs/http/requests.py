"""Request bodies of /v1/chat/completions and /v1/completions, parsed into plain data.

Every field is type-checked here so a bad one gets a 400 that names it; ranges
are checked by SamplingParams.validate (the same rules the Python API applies).
Unknown fields are ignored, as the OpenAI API does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mistralrs.engine.params import SamplingParams
from mistralrs.http.body import Fields, bad_request
from mistralrs.http.messages import parse_messages

MAX_CHOICES = 128  # the OpenAI limit on `n`
MAX_COMPLETION_LOGPROBS = 20  # SamplingParams allows 20 alternatives (OpenAI: 5)
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # the OpenAI rule for function names
TOOL_CHOICES = ("none", "auto", "required")


@dataclass
class StreamOptions:
    stream: bool = False
    include_usage: bool = False


@dataclass
class ChatRequest:
    model: str | None
    messages: list[dict]
    params: SamplingParams
    n: int
    stream: StreamOptions
    enable_thinking: bool | None
    template_kwargs: dict = field(default_factory=dict)
    # The request's function tools as the template receives them (None: no tools), and `tool_choice`:
    # "none", "auto", "required", or the one function name the model is asked to call.
    tools: list[dict] | None = None
    tool_choice: str = "auto"
    named_tool: str | None = None

    @property
    def prompt_tools(self) -> list[dict] | None:
        """The tools to render into the prompt: none for tool_choice "none", the named one for a named choice."""
        if not self.tools or self.tool_choice == "none":
            return None
        if self.named_tool is not None:
            return [tool for tool in self.tools if tool["function"]["name"] == self.named_tool]
        return self.tools

    @property
    def call_names(self) -> set[str] | None:
        """The function names a tool call in the answer may use; None: the answer is not parsed for calls."""
        tools = self.prompt_tools
        return {tool["function"]["name"] for tool in tools} if tools else None


@dataclass
class CompletionRequest:
    model: str | None
    prompts: list[str | list[int]]
    params: SamplingParams
    n: int
    stream: StreamOptions
    echo: bool


def parse_chat_request(data: dict) -> ChatRequest:
    fields = Fields(data)
    _refuse_unbuilt(fields)
    params = _sampling_params(fields, max_tokens_keys=("max_completion_tokens", "max_tokens"))
    params.logprobs = fields.boolean("logprobs")
    params.top_logprobs = fields.integer("top_logprobs", 0) or 0
    if params.top_logprobs and not params.logprobs:
        raise bad_request("`top_logprobs` needs `logprobs: true`.", "top_logprobs")
    kwargs = fields.obj("chat_template_kwargs")
    template_kwargs = dict(kwargs.data) if kwargs else {}
    tools = _tools(fields.raw("tools"))
    tool_choice, named_tool = _tool_choice(fields.raw("tool_choice"), tools)
    fields.boolean("parallel_tool_calls")  # type-checked; every call the model writes is returned
    enable_thinking = fields.boolean("enable_thinking") if fields.present("enable_thinking") else None
    if enable_thinking is None and isinstance(template_kwargs.get("enable_thinking"), bool):
        enable_thinking = template_kwargs["enable_thinking"]
    template_kwargs.pop("enable_thinking", None)
    return ChatRequest(
        model=fields.string("model"),
        messages=parse_messages(data.get("messages")),
        params=params.validate(),
        n=fields.integer("n", 1, low=1, high=MAX_CHOICES),
        stream=_stream_options(fields),
        enable_thinking=enable_thinking,
        template_kwargs=template_kwargs,
        tools=tools,
        tool_choice=tool_choice,
        named_tool=named_tool,
    )


def _tools(value) -> list[dict] | None:
    """`tools`: OpenAI function tools, checked; an empty list is no tools."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise bad_request("`tools` must be a list of {\"type\": \"function\", \"function\": {...}} objects.",
                          "tools")
    names = set()
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise bad_request(f"`{where}` must be an object with `type: \"function\"`; only function tools "
                              "are supported.", "tools")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise bad_request(f"`{where}.function` must be an object with a `name`.", "tools")
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise bad_request(f"`{where}.function.name` must be 1 to 64 letters, digits, `_` or `-`; "
                              f"got {name!r}.", "tools")
        if name in names:
            raise bad_request(f"`{where}.function.name` {name!r} is used by two tools.", "tools")
        names.add(name)
        if function.get("description") is not None and not isinstance(function["description"], str):
            raise bad_request(f"`{where}.function.description` must be a string.", "tools")
        if function.get("parameters") is not None and not isinstance(function["parameters"], dict):
            raise bad_request(f"`{where}.function.parameters` must be a JSON Schema object.", "tools")
    return list(value) or None


def _tool_choice(value, tools: list[dict] | None) -> tuple[str, str | None]:
    """(choice, named function): "auto" by default; a named function must be one of `tools`."""
    if value is None:
        return "auto", None
    if isinstance(value, str):
        if value not in TOOL_CHOICES:
            raise bad_request(f"`tool_choice` must be one of {', '.join(TOOL_CHOICES)}, or "
                              f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}; got {value!r}.",
                              "tool_choice")
        if value == "required" and not tools:
            raise bad_request("`tool_choice: \"required\"` needs `tools`.", "tool_choice")
        return value, None
    function = value.get("function") if isinstance(value, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or value.get("type") != "function":
        raise bad_request("`tool_choice` must be a string or {\"type\": \"function\", \"function\": "
                          "{\"name\": ...}}.", "tool_choice")
    if not any(tool["function"]["name"] == name for tool in tools or []):
        raise bad_request(f"`tool_choice` names the function {name!r}, which is not in `tools`.", "tool_choice")
    return "function", name


def parse_completion_request(data: dict) -> CompletionRequest:
    fields = Fields(data)
    _refuse_unbuilt(fields)
    if fields.string("suffix"):
        raise bad_request("`suffix` (fill-in-the-middle) is not supported.", "suffix")
    params = _sampling_params(fields, max_tokens_keys=("max_tokens",))
    top = fields.integer("logprobs", low=0, high=MAX_COMPLETION_LOGPROBS)
    params.logprobs = top is not None
    params.top_logprobs = top or 0
    n = fields.integer("n", 1, low=1, high=MAX_CHOICES)
    best_of = fields.integer("best_of", n, low=1, high=MAX_CHOICES)
    if best_of != n:
        raise bad_request("`best_of` other than `n` is not supported: every generated choice is returned.",
                          "best_of")
    return CompletionRequest(
        model=fields.string("model"),
        prompts=_prompts(data.get("prompt")),
        params=params.validate(),
        n=n,
        stream=_stream_options(fields),
        echo=fields.boolean("echo"),
    )


def _refuse_unbuilt(fields: Fields) -> None:
    # Accepting these and ignoring them would give silently wrong answers (no JSON, no grammar).
    response_format = fields.obj("response_format")
    if response_format and response_format.raw("type") not in (None, "text"):
        raise bad_request(f"`response_format` type {response_format.raw('type')!r} is not supported yet; "
                          "only `text`.", "response_format.type")
    if fields.present("grammar"):
        raise bad_request("Constrained generation (`grammar`) is not supported yet.", "grammar")


def _stream_options(fields: Fields) -> StreamOptions:
    options = fields.obj("stream_options")
    include_usage = options.boolean("include_usage") if options else False
    return StreamOptions(stream=fields.boolean("stream"), include_usage=include_usage)


def _sampling_params(fields: Fields, max_tokens_keys: tuple[str, ...]) -> SamplingParams:
    max_tokens = None
    for key in max_tokens_keys:
        max_tokens = fields.integer(key)
        if max_tokens is not None:
            if max_tokens < 1:
                raise bad_request(f"`{key}` must be at least 1, got {max_tokens}.", key)
            break
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=fields.number("temperature"),
        top_p=fields.number("top_p"),
        top_k=fields.integer("top_k"),
        min_p=fields.number("min_p"),
        repetition_penalty=fields.number("repetition_penalty"),
        presence_penalty=fields.number("presence_penalty", 0.0),
        frequency_penalty=fields.number("frequency_penalty", 0.0),
        logit_bias=_logit_bias(fields),
        seed=fields.integer("seed"),
        stop=_stop_strings(fields),
        ignore_eos=fields.boolean("ignore_eos"),
    )


def _stop_strings(fields: Fields) -> list[str]:
    value = fields.raw("stop")
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("`stop` must be a string or a list of strings.", "stop")
    if any(s == "" for s in stops):
        raise bad_request("`stop` strings must not be empty.", "stop")
    return list(stops)


def _logit_bias(fields: Fields) -> dict[int, float] | None:
    bias = fields.obj("logit_bias")
    if bias is None:
        return None
    parsed = {}
    for key in bias.data:
        # JSON object keys are strings; OpenAI's are token ids written as strings.
        try:
            token_id = int(key)
        except ValueError:
            raise bad_request(f"`logit_bias` keys must be token ids, got {key!r}.", "logit_bias") from None
        parsed[token_id] = bias.number(key, low=-100, high=100)
    return parsed


def _prompts(value) -> list[str | list[int]]:
    """A prompt, a list of prompts, a token-id list, or a list of token-id lists: one entry per prompt."""
    if value is None:
        raise bad_request("`prompt` is required: a string, a list of strings, or token ids.", "prompt")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(p, str) for p in value):
            return list(value)
        if all(_is_token_id(t) for t in value):
            return [list(value)]
        if all(isinstance(p, list) and p and all(_is_token_id(t) for t in p) for p in value):
            return [list(p) for p in value]
    raise bad_request("`prompt` must be a string, a non-empty list of strings, a list of token ids, "
                      "or a list of token-id lists.", "prompt")


def _is_token_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
