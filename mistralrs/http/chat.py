"""POST /v1/chat/completions: render the conversation with the chat template, generate, answer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import falcon

from mistralrs.engine.chat_template import ThinkingStream, prompt_opens_thinking, split_thinking
from mistralrs.http.body import bad_request, read_json_object
from mistralrs.http.choices import PlannedChoice, close_all, plan_choices
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


class ChatCompletions:
    def __init__(self, served: ServedModel):
        self.served = served

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = parse_chat_request(read_json_object(req))
        self.served.check_requested(request.model)
        llm = self.served.llm
        request.params.seed = self.served.request_seed(request.params.seed)
        reserved = [name for name in RESERVED_TEMPLATE_NAMES if name in request.template_kwargs]
        if reserved:
            raise bad_request(f"`chat_template_kwargs` may not set `{reserved[0]}`; the server sets it.",
                              "chat_template_kwargs")
        prompt = llm.render_chat(request.messages, enable_thinking=request.enable_thinking,
                                 **request.template_kwargs)
        ids = llm.encode(prompt, add_special_tokens=False)  # the template wrote the special tokens
        thinks = bool(request.enable_thinking) or (llm.template is not None and llm.template.thinks)
        thinking = Thinking(split=thinks, starts_in_reasoning=prompt_opens_thinking(prompt))
        planned = plan_choices(llm, [ids], request.params, request.n, prompt_param="messages")
        if request.stream.stream:
            stream_events(resp, self._events(request, planned, len(ids), thinking))
        else:
            resp.media = self._response(request, planned, len(ids), thinking)

    def _response(self, request: ChatRequest, planned: list[PlannedChoice], prompt_length: int,
                  thinking: Thinking) -> dict:
        choices, completions = [], []
        try:
            for choice in planned:
                completion = choice.stream.collect()
                completions.append(completion)
                message = {"role": "assistant", "content": completion.text}
                if thinking.split:
                    reasoning, content = split_thinking(completion.text, thinking.starts_in_reasoning)
                    message["content"] = content
                    if reasoning is not None:
                        message["reasoning_content"] = reasoning
                choices.append({"index": choice.index, "message": message,
                                "finish_reason": completion.finish_reason,
                                "logprobs": chat_logprobs(completion.logprobs)})
        finally:
            close_all(planned)
        return {"id": response_id("chatcmpl"), "object": "chat.completion", "created": now(),
                "model": self.served.model_id, "choices": choices,
                "usage": usage_body([prompt_length], completions)}

    def _events(self, request: ChatRequest, planned: list[PlannedChoice], prompt_length: int,
                thinking: Thinking) -> Iterator[bytes]:
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
            for choice in planned:
                yield event(choice.index, {"role": "assistant", "content": ""})
                splitter = thinking.stream()
                for chunk in choice.stream:
                    pieces = splitter.feed(chunk.text) if splitter else [("content", chunk.text)]
                    if chunk.finish_reason and splitter:
                        pieces += splitter.finish()
                    deltas = [{DELTA_FIELDS[kind]: text} for kind, text in pieces if text]
                    logprobs = {"content": [chat_logprob_entry(chunk.logprob)]} if chunk.logprob else None
                    if logprobs and not deltas:
                        deltas = [{"content": ""}]  # every token's logprob is sent, even mid-character
                    for i, delta in enumerate(deltas):
                        yield event(choice.index, delta, logprobs=logprobs if i == 0 else None)
                yield event(choice.index, {}, finish_reason=choice.stream.completion.finish_reason)
            if include_usage:
                usage = usage_body([prompt_length], [c.stream.completion for c in planned])
                yield sse_event({**header, "choices": [], "usage": usage})
            yield DONE
        finally:
            close_all(planned)
