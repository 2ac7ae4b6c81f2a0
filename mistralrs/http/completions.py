"""POST /v1/completions: the legacy text-completion API (prompt in, text out, no chat template)."""

from __future__ import annotations

from collections.abc import Iterator

import falcon

from mistralrs.http.body import read_json_object
from mistralrs.http.choices import PlannedChoice, close_all, plan_choices
from mistralrs.http.logprobs import completion_logprobs
from mistralrs.http.requests import CompletionRequest, parse_completion_request
from mistralrs.http.responses import now, response_id, usage_body
from mistralrs.http.served_model import ServedModel
from mistralrs.http.sse import DONE, sse_event, stream_events


class Completions:
    def __init__(self, served: ServedModel):
        self.served = served

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = parse_completion_request(read_json_object(req))
        self.served.check_requested(request.model)
        llm = self.served.llm
        request.params.seed = self.served.request_seed(request.params.seed)
        prompt_ids = [llm.encode(prompt) for prompt in request.prompts]
        # With echo, the answer starts with the prompt as text, however it was sent.
        prompt_texts = [p if isinstance(p, str) else llm.tokenizer.decode(p) for p in request.prompts]
        planned = plan_choices(llm, prompt_ids, request.params, request.n, prompt_param="prompt")
        lengths = [len(ids) for ids in prompt_ids]
        echoes = prompt_texts if request.echo else ["" for _ in prompt_texts]
        if request.stream.stream:
            stream_events(resp, self._events(request, planned, lengths, echoes))
        else:
            resp.media = self._response(planned, lengths, echoes)

    def _response(self, planned: list[PlannedChoice], lengths: list[int], echoes: list[str]) -> dict:
        choices, completions = [], []
        try:
            for choice in planned:
                completion = choice.stream.collect()
                completions.append(completion)
                echo = echoes[choice.prompt_index]
                choices.append({"index": choice.index, "text": echo + completion.text,
                                "finish_reason": completion.finish_reason,
                                "logprobs": completion_logprobs(completion.logprobs, len(echo))})
        finally:
            close_all(planned)
        return {"id": response_id("cmpl"), "object": "text_completion", "created": now(),
                "model": self.served.model_id, "choices": choices, "usage": usage_body(lengths, completions)}

    def _events(self, request: CompletionRequest, planned: list[PlannedChoice], lengths: list[int],
                echoes: list[str]) -> Iterator[bytes]:
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
            for choice in planned:
                offset = len(echoes[choice.prompt_index])
                if offset:
                    yield event(choice.index, echoes[choice.prompt_index])
                for chunk in choice.stream:
                    logprobs = completion_logprobs([chunk.logprob], offset) if chunk.logprob else None
                    offset += len(chunk.logprob.token) if chunk.logprob else 0
                    if chunk.text or logprobs:
                        yield event(choice.index, chunk.text, logprobs=logprobs)
                yield event(choice.index, "", finish_reason=choice.stream.completion.finish_reason)
            if include_usage:
                usage = usage_body(lengths, [c.stream.completion for c in planned])
                yield sse_event({**header, "choices": [], "usage": usage})
            yield DONE
        finally:
            close_all(planned)
