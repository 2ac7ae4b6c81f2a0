"""From sampled token ids to what a caller sees: text chunks, stop handling, logprobs, the Completion.

One class shared by the single-stream path (api.CompletionStream) and the batching
scheduler, so a sequence ends and reads the same whichever path generated it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from mistralrs.engine.params import Chunk, Completion, SamplingParams, Timing, TokenLogprob, Usage
from mistralrs.engine.sampling import Sampler
from mistralrs.engine.stop import StopStrings
from mistralrs.errors import UserError

if TYPE_CHECKING:
    from mistralrs.engine.api import LLM


def max_new_tokens(llm: LLM, prompt_ids: list[int], params: SamplingParams) -> int:
    """Validate a request for one sequence; the number of tokens it may generate.

    Runs before any generation, so a bad request fails at once (a 400 before a stream starts).
    """
    params.validate(llm.vocab_size)
    if not prompt_ids:
        raise UserError("The prompt is empty: give at least one token of text.", param="prompt")
    room = llm.context_length - len(prompt_ids)
    if room < 1:
        raise UserError(
            f"The prompt is {len(prompt_ids)} tokens but the context holds {llm.context_length}; "
            "shorten it (or raise --max-seq-len if the model supports more).",
            param="messages",
        )
    return min(params.max_tokens or room, room)


class OutputBuilder:
    """Feed it each sampled token; it returns the Chunk to emit and, once done, holds `.completion`."""

    def __init__(self, llm: LLM, prompt_ids: list[int], params: SamplingParams, max_tokens: int,
                 sampler: Sampler, start: float | None = None):
        self.llm = llm
        self.prompt_ids = prompt_ids
        self.params = params
        self.max_tokens = max_tokens
        self.sampler = sampler
        self.stops = StopStrings(params.stop)
        self.stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else llm.eos_token_ids)
        self.want_logprobs = params.logprobs or params.top_logprobs > 0
        self.decoder = llm.tokenizer.stream_decoder()
        self.ids: list[int] = []
        self.pieces: list[str] = []
        self.logprobs: list[TokenLogprob] | None = [] if self.want_logprobs else None
        self.prompt_logprobs: list[TokenLogprob] | None = None  # filled by a caller that computes them
        self.start = time.perf_counter() if start is None else start
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.completion: Completion | None = None

    def add(self, token_id: int, logits=None) -> Chunk:
        """The chunk for one sampled token; `logits` (the row it was sampled from) only for logprobs."""
        self.last_at = time.perf_counter()
        self.first_at = self.first_at or self.last_at
        self.ids.append(token_id)
        stopped_by_token = token_id in self.stop_ids
        lp = None
        if self.want_logprobs:
            lp = token_logprob(self.llm, self.sampler, logits, token_id, self.params.top_logprobs)
            self.logprobs.append(lp)
        # Stop tokens (EOS) end the answer without appearing in its text.
        text = "" if stopped_by_token else self.decoder.add(token_id)
        emit, stopped_by_string = self.stops.feed(text)
        done = stopped_by_token or stopped_by_string or len(self.ids) >= self.max_tokens
        finish = None
        if done:
            finish = "stop" if stopped_by_token or stopped_by_string else "length"
            if not stopped_by_string:
                tail, _ = self.stops.feed(self.decoder.flush())
                emit += tail + self.stops.flush()
        self.pieces.append(emit)
        if done:  # set before the last chunk is seen, so a consumer can read it at once
            self._finish(finish)
        return Chunk(emit, token_id, finish, lp)

    def cancel(self) -> None:
        """End a sequence nobody reads any more (a no-op once it finished)."""
        if self.completion is None:
            self._finish("cancelled")

    def _finish(self, finish: str) -> None:
        ttft = (self.first_at - self.start) if self.first_at else 0.0
        decode = (self.last_at - self.first_at) if self.first_at else 0.0
        self.completion = Completion(
            text="".join(self.pieces),
            token_ids=list(self.ids),
            finish_reason=finish,
            usage=Usage(len(self.prompt_ids), len(self.ids)),
            timing=Timing(ttft, decode),
            logprobs=self.logprobs,
            prompt_logprobs=self.prompt_logprobs,
        )


def token_logprob(llm: LLM, sampler: Sampler, logits, token_id: int, top: int) -> TokenLogprob:
    tok = llm.tokenizer
    chosen, alternatives = sampler.logprobs(logits, token_id, top)
    return TokenLogprob(
        token_id=token_id,
        token=tok.token_text(token_id),
        logprob=chosen,
        top=[(i, tok.token_text(i), v) for i, v in alternatives],
    )
