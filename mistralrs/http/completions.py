"""POST /v1/completions: the legacy text-completion API (prompt in, text out, no chat template)."""

from __future__ import annotations

from collections.abc import Iterator

import falcon

from mistralrs.engine.scheduler import RequestStream
from mistralrs.http.body import read_json_object
from mistralrs.http.choices import disconnect_check, submit_choices
from mistralrs.http.exchange_log import Exchange
from mistralrs.http.logprobs import completion_logprobs
from mistralrs.http.requests import CompletionRequest, parse_completion_request
from mistralrs.http.responses import now, response_id, usage_body
from mistralrs.http.served_model import ServedModel
from mistralrs.http.sse import DONE, sse_event, stream_events


class Completions:
    def __init__(self, served: ServedModel, log=None):
        self.served = served
        self.log = log  # -l/--log: a RequestLog, or None

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        data = read_json_object(req)
        request = parse_completion_request(data)
        self.served.check_requested(request.model)
        llm = self.served.llm
        request.params.seed = self.served.request_seed(request.params.seed)
        # OpenAI's legacy API: with echo and logprobs, the prompt's tokens are scored too.
        request.params.prompt_logprobs = request.echo and request.params.logprobs
        prompt_ids = [llm.encode(prompt) for prompt in request.prompts]
        # With echo, the answer starts with the prompt as text, however it was sent.
        prompt_texts = [p if isinstance(p, str) else llm.tokenizer.decode(p) for p in request.prompts]
        stream = submit_choices(self.served, prompt_ids, request.params, request.n, prompt_param="prompt")
        lengths = [len(ids) for ids in prompt_ids]
        # Choice i answers prompt i // n.
        echoes = [prompt_texts[i // request.n] if request.echo else "" for i in range(len(stream.sequences))]
        exchange = Exchange(self.log, req.path, self.served.model_id, data)
        if request.stream.stream:
            stream_events(resp, self._events(request, stream, lengths, echoes, exchange, disconnect_check(req)))
        else:
            resp.media = self._response(stream, lengths, echoes, disconnect_check(req), exchange)

    def _response(self, stream: RequestStream, lengths: list[int], echoes: list[str], disconnected,
                  exchange: Exchange) -> dict:
        completions = stream.collect(disconnected)
        if any(c is None or c.finish_reason == "cancelled" for c in completions):
            return {}  # the client has gone; nobody reads this
        choices = []
        for index, completion in enumerate(completions):
            echo = echoes[index]
            choices.append({"index": index, "text": echo + completion.text,
                            "finish_reason": completion.finish_reason,
                            "logprobs": completion_logprobs(completion.logprobs, len(echo),
                                                            completion.prompt_logprobs)})
        body = {"id": response_id("cmpl"), "object": "text_completion", "created": now(),
                "model": self.served.model_id, "choices": choices, "usage": usage_body(lengths, completions)}
        exchange.answered(body["id"], [{"text": c["text"]} for c in choices], completions)
        return body

    def _events(self, request: CompletionRequest, stream: RequestStream, lengths: list[int],
                echoes: list[str], exchange: Exchange, disconnected) -> Iterator[bytes]:
        header = {"id": response_id("cmpl"), "object": "text_completion", "created": now(),
                  "model": self.served.model_id}
        include_usage = request.stream.include_usage

        def event(index: int, text: str, finish_reason=None, logprobs=None) -> bytes:
            body = {**header, "choices": [{"index": index, "text": text, "logprobs": logprobs,
                                           "finish_reason": finish_reason}]}
            if include_usage:
                body["usage"] = None
            return sse_event(body)

        try:
            offsets: dict[int, int] = {}
            for index, chunk in stream.events(disconnected):
                if index not in offsets:
                    # The echo goes first, once the prompt has been read (its logprobs are known then).
                    offsets[index] = len(echoes[index])
                    if echoes[index]:
                        prompt_lps = stream.prompt_logprobs(index)
                        yield event(index, echoes[index],
                                    logprobs=completion_logprobs([], 0, prompt_lps) if prompt_lps else None)
                offset = offsets[index]
                logprobs = completion_logprobs([chunk.logprob], offset) if chunk.logprob else None
                offsets[index] += len(chunk.logprob.token) if chunk.logprob else 0
                if chunk.text or logprobs:
                    yield event(index, chunk.text, logprobs=logprobs)
                if chunk.finish_reason:
                    yield event(index, "", finish_reason=chunk.finish_reason)
            completions = stream.completions
            if any(c is None or c.finish_reason == "cancelled" for c in completions):
                return  # the client has gone
            if include_usage:
                yield sse_event({**header, "choices": [], "usage": usage_body(lengths, completions)})
            yield DONE
            exchange.answered(header["id"], [{"text": e + c.text} for e, c in zip(echoes, completions, strict=True)],
                              completions)
        finally:
            stream.cancel()
