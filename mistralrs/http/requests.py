"""Request bodies of /v1/chat/completions and /v1/completions, parsed into plain data.

Every field is type-checked here so a bad one gets a 400 that names it; ranges
are checked by SamplingParams.validate (the same rules the Python API applies).
Unknown fields are ignored, as the OpenAI API does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mistralrs.engine.params import SamplingParams
from mistralrs.http.body import Fields, bad_request
from mistralrs.http.messages import parse_messages

MAX_CHOICES = 128  # the OpenAI limit on `n`
MAX_COMPLETION_LOGPROBS = 20  # SamplingParams allows 20 alternatives (OpenAI: 5)


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
    )


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
    # Accepting these and ignoring them would give silently wrong answers (no tool call, no JSON).
    if fields.present("tools") and fields.raw("tools") != []:
        raise bad_request("Tool calling (`tools`) is not implemented in this server yet.", "tools")
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
