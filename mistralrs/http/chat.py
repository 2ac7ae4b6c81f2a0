"""POST /v1/chat/completions: render the conversation with the chat template, generate, answer.

Tool calling: the request's function tools are rendered into the prompt by the
model's chat template (HF semantics), and the answer is parsed for calls in the
Hermes/Qwen `<tool_call>` or the Llama 3 JSON format (mistralrs.engine.tool_calls).
`tool_choice: "none"` renders no tools and parses nothing; a named choice renders
only that tool and accepts only calls to it. Output is not constrained: with
`"required"` or a named function, an answer without a (matching) call comes back
as plain content with finish_reason "stop".
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass

import falcon

from mistralrs.engine.chat_template import ThinkingStream, prompt_opens_thinking, split_thinking
from mistralrs.engine.scheduler import RequestStream
from mistralrs.engine.tool_calls import ToolCallStream, parse_tool_calls
from mistralrs.http.body import bad_request, read_json_object
from mistralrs.http.choices import disconnect_check, submit_choices
from mistralrs.http.exchange_log import Exchange
from mistralrs.http.logprobs import chat_logprob_entry, chat_logprobs
from mistralrs.http.requests import ChatRequest, parse_chat_request
from mistralrs.http.responses import now, response_id, usage_body
from mistralrs.http.served_model import ServedModel
from mistralrs.http.sse import DONE, sse_event, stream_events

# Names the server itself passes to the template; chat_template_kwargs may not override them.
RESERVED_TEMPLATE_NAMES = ("messages", "tools", "add_generation_prompt", "bos_token", "eos_token", "documents")
DELTA_FIELDS = {"reasoning": "reasoning_content", "content": "content"}


@dataclass
class Thinking:
    """Whether to split <think> blocks into reasoning_content, and whether the prompt already opened one."""

    split: bool
    starts_in_reasoning: bool

    def stream(self) -> ThinkingStream | None:
        return ThinkingStream(self.starts_in_reasoning) if self.split else None


def answer_message(text: str, finish_reason: str, thinking: Thinking,
                   call_names: Collection[str] | None) -> tuple[dict, str]:
    """The assistant message of a whole answer and its finish_reason (tool calls make it "tool_calls").

    `call_names`: the tool names a call may use; None when the answer is not parsed for calls.
    """
    message = {"role": "assistant", "content": text}
    content, reasoning = text, None
    if thinking.split:
        reasoning, content = split_thinking(text, thinking.starts_in_reasoning)
    calls = []
    if call_names:
        content, calls = parse_tool_calls(content, call_names)
    message["content"] = content if content or not calls else None
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [call.openai() for call in calls]
    return message, tool_finish_reason(finish_reason, bool(calls))


def tool_finish_reason(finish_reason: str | None, called: bool) -> str | None:
    # An answer cut off by max_tokens stays "length" even when it holds complete calls.
    return "tool_calls" if called and finish_reason == "stop" else finish_reason


class ChoiceDeltas:
    """Turns one choice's streamed text into OpenAI delta objects: reasoning, content, tool calls."""

    def __init__(self, thinking: Thinking, call_names: Collection[str] | None):
        self.splitter = thinking.stream()
        self.tools = ToolCallStream(call_names) if call_names else None
        self.calls = 0

    def feed(self, text: str, last: bool = False) -> list[dict]:
        """The deltas that `text` makes certain; `last`: the output ends here, release what is held."""
        pieces = self.splitter.feed(text) if self.splitter else [("content", text)]
        if last and self.splitter:
            pieces += self.splitter.finish()
        if self.tools:
            parsed = []
            for kind, value in pieces:
                parsed += self.tools.feed(value) if kind == "content" else [(kind, value)]
            if last:
                parsed += self.tools.finish()
            pieces = parsed
        deltas = []
        for kind, value in pieces:
            if kind == "tool_call":
                deltas.append({"tool_calls": [{"index": self.calls, **value.openai()}]})
                self.calls += 1
            elif value:
                deltas.append({DELTA_FIELDS[kind]: value})
        return deltas

    def finish_reason(self, finish_reason: str | None) -> str | None:
        return tool_finish_reason(finish_reason, self.calls > 0)


class ChatCompletions:
    def __init__(self, served: ServedModel, log=None):
        self.served = served
        self.log = log  # -l/--log: a RequestLog, or None

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        data = read_json_object(req)
        request = parse_chat_request(data)
        self.served.check_requested(request.model)
        llm = self.served.llm
        request.params.seed = self.served.request_seed(request.params.seed)
        reserved = [name for name in RESERVED_TEMPLATE_NAMES if name in request.template_kwargs]
        if reserved:
            raise bad_request(f"`chat_template_kwargs` may not set `{reserved[0]}`; the server sets it.",
                              "chat_template_kwargs")
        tools = request.prompt_tools
        if tools and llm.template is not None and "tools" not in llm.template.variables:
            raise bad_request(f"The chat template of {self.served.model_id} does not render tools, so this "
                              "model cannot be offered `tools`; pass a template that does with "
                              "-c/--chat-template, or send `tool_choice: \"none\"`.", "tools")
        prompt = llm.render_chat(request.messages, tools=tools, enable_thinking=request.enable_thinking,
                                 **request.template_kwargs)
        ids = llm.encode(prompt, add_special_tokens=False)  # the template wrote the special tokens
        thinks = bool(request.enable_thinking) or (llm.template is not None and llm.template.thinks)
        thinking = Thinking(split=thinks, starts_in_reasoning=prompt_opens_thinking(prompt))
        stream = submit_choices(self.served, [ids], request.params, request.n, prompt_param="messages")
        exchange = Exchange(self.log, req.path, self.served.model_id, data)
        if request.stream.stream:
            stream_events(resp, self._events(request, stream, len(ids), thinking, exchange, disconnect_check(req)))
        else:
            resp.media = self._response(request, stream, len(ids), thinking, disconnect_check(req), exchange)

    def _response(self, request: ChatRequest, stream: RequestStream, prompt_length: int, thinking: Thinking,
                  disconnected, exchange: Exchange) -> dict:
        completions = stream.collect(disconnected)
        if any(c is None or c.finish_reason == "cancelled" for c in completions):
            return {}  # the client has gone; nobody reads this
        choices = []
        for index, completion in enumerate(completions):
            message, finish_reason = answer_message(completion.text, completion.finish_reason, thinking,
                                                    request.call_names)
            choices.append({"index": index, "message": message, "finish_reason": finish_reason,
                            "logprobs": chat_logprobs(completion.logprobs)})
        body = {"id": response_id("chatcmpl"), "object": "chat.completion", "created": now(),
                "model": self.served.model_id, "choices": choices,
                "usage": usage_body([prompt_length], completions)}
        exchange.answered(body["id"], [c["message"] for c in choices], completions)
        return body

    def _events(self, request: ChatRequest, stream: RequestStream, prompt_length: int,
                thinking: Thinking, exchange: Exchange, disconnected) -> Iterator[bytes]:
        header = {"id": response_id("chatcmpl"), "object": "chat.completion.chunk", "created": now(),
                  "model": self.served.model_id}
        include_usage = request.stream.include_usage

        def event(index: int, delta: dict, finish_reason=None, logprobs=None) -> bytes:
            body = {**header, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                           "finish_reason": finish_reason}]}
            if include_usage:  # OpenAI: with include_usage every chunk has `usage`, null until the last
                body["usage"] = None
            return sse_event(body)

        try:
            builders = {}
            # Choices are generated side by side, so their events interleave; each has its own index.
            # `disconnected` also catches a client that leaves while its request still waits for a place.
            for index, chunk in stream.events(disconnected):
                builder = builders.get(index)
                if builder is None:
                    builder = builders[index] = ChoiceDeltas(thinking, request.call_names)
                    yield event(index, {"role": "assistant", "content": ""})
                deltas = builder.feed(chunk.text, last=bool(chunk.finish_reason))
                logprobs = {"content": [chat_logprob_entry(chunk.logprob)]} if chunk.logprob else None
                if logprobs and not deltas:
                    deltas = [{"content": ""}]  # every token's logprob is sent, even mid-character
                for i, delta in enumerate(deltas):
                    yield event(index, delta, logprobs=logprobs if i == 0 else None)
                if chunk.finish_reason:
                    yield event(index, {}, finish_reason=builder.finish_reason(chunk.finish_reason))
            completions = stream.completions
            if any(c is None or c.finish_reason == "cancelled" for c in completions):
                return  # the client has gone
            if include_usage:
                usage = usage_body([prompt_length], completions)
                yield sse_event({**header, "choices": [], "usage": usage})
            yield DONE
            exchange.answered(header["id"], [{"content": c.text} for c in completions], completions)
        finally:
            stream.cancel()
