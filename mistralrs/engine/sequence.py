"""A request's sequences as the scheduler tracks them, and the handle its caller reads them through.

The caller's thread reads chunks from the RequestStream's queue; the engine
thread writes them. Everything else about a Sequence belongs to the engine thread.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator

from mistralrs.engine.output import OutputBuilder
from mistralrs.engine.params import Chunk, Completion, SamplingParams, TokenLogprob
from mistralrs.engine.sampling import Sampler

DISCONNECT_POLL_S = 0.25  # how often a reader that can tell checks whether its client is gone


class QueueFull(Exception):
    """The waiting queue cannot take the request; try again after `retry_after_s`."""

    def __init__(self, waiting: int, limit: int, retry_after_s: int = 1):
        super().__init__(f"The server is busy: {waiting} sequences are waiting (the limit is {limit}); "
                         f"retry in {retry_after_s} s.")
        self.retry_after_s = retry_after_s


class EngineError(RuntimeError):
    """Generation failed inside the engine thread (a bug, or the device ran out of memory)."""


class Sequence:
    """One prompt being answered: the caller's handle fields, and the engine thread's working state."""

    def __init__(self, request: RequestStream, index: int, prompt_ids: list[int], params: SamplingParams,
                 max_tokens: int):
        self.request = request
        self.index = index
        self.prompt_ids = prompt_ids
        self.params = params
        self.max_tokens = max_tokens
        self.submitted_at = time.perf_counter()
        self.cancelled = False
        self.completion: Completion | None = None
        # Engine thread only:
        self.sampler: Sampler | None = None
        self.out: OutputBuilder | None = None
        self.caches = None  # the prefill's own caches, until the sequence joins the batch
        self.prefilled = 0
        self.row = -1
        self.next_token = -1
        self.last_token_at = 0.0


class RequestStream:
    """The sequences of one request (n choices, several prompts), read together as they produce chunks."""

    def __init__(self, wake: Callable[[], None]):
        self._wake = wake  # tells the engine thread to look at cancellations now
        self.sequences: list[Sequence] = []
        self._items: queue.SimpleQueue = queue.SimpleQueue()

    @property
    def completions(self) -> list[Completion | None]:
        return [seq.completion for seq in self.sequences]

    def events(self, disconnected: Callable[[], bool] | None = None) -> Iterator[tuple[int, Chunk]]:
        """(sequence index, chunk) as the engine produces them, until every sequence has finished.

        `disconnected`, when given, is polled while waiting: once it returns True the request is
        cancelled and iteration ends. Closing the iterator early also cancels.
        """
        remaining = {seq.index for seq in self.sequences if seq.completion is None}
        checked_at = time.monotonic()
        try:
            while remaining:
                # Checked on a clock, not only when idle: chunks may arrive faster than the poll interval.
                if disconnected and time.monotonic() - checked_at >= DISCONNECT_POLL_S:
                    if disconnected():
                        return
                    checked_at = time.monotonic()
                try:
                    index, item = self._items.get(timeout=DISCONNECT_POLL_S if disconnected else None)
                except queue.Empty:
                    continue
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason:
                    remaining.discard(index)
                yield index, item
        finally:
            if remaining:
                self.cancel()

    def prompt_logprobs(self, index: int) -> list[TokenLogprob] | None:
        """The scored prompt of sequence `index` (when asked for); complete once its first chunk arrived."""
        out = self.sequences[index].out
        return None if out is None else out.prompt_logprobs

    def collect(self, disconnected: Callable[[], bool] | None = None) -> list[Completion | None]:
        """Wait for every sequence; their completions (None for any cancelled by a disconnect)."""
        for _ in self.events(disconnected):
            pass
        return self.completions

    def cancel(self) -> None:
        """Stop generating for this request and free its caches (finished sequences are unaffected)."""
        if all(seq.completion is not None for seq in self.sequences):
            return
        for seq in self.sequences:
            seq.cancelled = seq.completion is None
        self._wake()

    def _put(self, index: int, item) -> None:
        self._items.put((index, item))
