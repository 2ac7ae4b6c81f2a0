"""Continuous batching: one engine thread owns the model and steps every running sequence together.

    scheduler = Scheduler(llm, max_seqs=32)
    request = scheduler.submit([(prompt_ids, params)])      # raises QueueFull when the queue is full
    for index, chunk in request.events():
        print(chunk.text, end="")

Each loop of the engine thread:
1. admits waiting sequences while fewer than `max_seqs` are running;
2. prefills whole prompt chunks (of `llm.prefill_chunk` tokens, the same chunks as
   the single-stream path) up to one chunk's worth of tokens in all, so a long
   prompt is spread over several loops instead of stalling everyone's decoding;
3. decodes one token for every sequence in the batch in one forward pass.
Sequences join the batch when their prefill ends and leave it when they finish or
are cancelled, between two steps. Every sequence keeps its own sampler (seed,
penalties, bias, logprobs), so its tokens do not depend on what it is batched with.

Requests wait in a bounded queue; a full queue raises QueueFull at once (the
server answers 503) instead of letting latency grow without limit.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from mistralrs.engine import heap
from mistralrs.engine.metrics import EngineMetrics
from mistralrs.engine.output import OutputBuilder, max_new_tokens
from mistralrs.engine.params import Chunk, SamplingParams
from mistralrs.engine.prompt_logprobs import first_entry, score_chunk
from mistralrs.engine.sampling import Sampler
from mistralrs.engine.sequence import EngineError, QueueFull, RequestStream, Sequence
from mistralrs.errors import UserError
from mistralrs.models.batch_cache import DecodeBatch

if TYPE_CHECKING:
    from mistralrs.engine.api import LLM

log = logging.getLogger("mistralrs.engine")

__all__ = ["EngineError", "QueueFull", "RequestStream", "Scheduler"]

# Engine threads are stopped before the interpreter exits: torch (2.13, CPU) aborts the process
# ("terminate called without an active exception") when a thread that ran its kernels is still
# alive at exit. MLX wants the opposite, handled in Scheduler._loop.
_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for scheduler in list(_LIVE):
        scheduler.close()

class Scheduler:
    def __init__(self, llm: LLM, *, max_seqs: int = 32, max_waiting: int | None = None,
                 metrics: EngineMetrics | None = None):
        if max_seqs < 1:
            raise UserError(f"--max-seqs must be at least 1, got {max_seqs}.", param="max_seqs")
        max_waiting = 2 * max_seqs if max_waiting is None else max_waiting
        if max_waiting < 1:
            raise UserError(f"The waiting queue must hold at least 1 sequence, got {max_waiting}.")
        self.llm = llm
        self.max_seqs = max_seqs
        self.max_waiting = max_waiting
        self.metrics = metrics or EngineMetrics()
        self._waiting: deque[Sequence] = deque()
        self._prefilling: list[Sequence] = []
        self._running: list[Sequence] = []  # in batch row order
        self._batch = self._new_batch()
        self._cond = threading.Condition()
        self._stopping = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mistralrs-engine", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    # ---- the caller's side (any thread) ---------------------------------------------------------
    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._prefilling) + len(self._running)

    def check(self, prompt_ids: list[int], params: SamplingParams) -> int:
        """Validate one sequence without submitting it; the tokens it may generate."""
        return max_new_tokens(self.llm, prompt_ids, params)

    def submit(self, prompts: list[tuple[list[int], SamplingParams]]) -> RequestStream:
        """Queue one request's sequences together (all or none); raises UserError or QueueFull."""
        request = RequestStream(self._wake)
        for index, (ids, params) in enumerate(prompts):
            request.sequences.append(Sequence(request, index, list(ids), params, self.check(ids, params)))
        with self._cond:
            if self._stopping:
                raise EngineError("The engine has stopped.")
            waiting = len(self._waiting)
            # An empty queue takes any request, so one with more choices than the limit still runs.
            if waiting and waiting + len(request.sequences) > self.max_waiting:
                raise QueueFull(waiting, self.max_waiting)
            self._waiting.extend(request.sequences)
            self._cond.notify()
        return request

    def close(self) -> None:
        """Stop the engine thread; sequences still queued or running fail with EngineError."""
        _LIVE.discard(self)
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._stopped.wait(timeout=30)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # ---- the engine thread ----------------------------------------------------------------------
    def _new_batch(self) -> DecodeBatch:
        windows = [spec.window for spec in self.llm.model.spec.attention]
        return DecodeBatch(self.llm.ops, windows, self.max_seqs)

    def _loop(self) -> None:
        busy = False
        while True:
            with self._cond:
                while not (self._stopping or self._waiting or self._prefilling or self._running):
                    if busy:  # going idle: the finished sequences' caches go back to the OS
                        busy = False
                        heap.trim()
                    self._cond.wait()
                busy = True
                if self._stopping:
                    break
                self._admit()
            with self.llm._lock:  # a direct llm.stream() in the same process takes turns with the batch
                try:
                    self._drop_cancelled()
                    self._prefill_some()
                    self._decode_step()
                except Exception as exc:  # the engine thread must outlive any bug in one step
                    log.exception("Engine step failed")
                    self._fail_all(EngineError(f"Generation failed ({type(exc).__name__}: {exc})."))
        for seq in [*self._waiting, *self._prefilling, *self._running]:
            self._fail(seq, EngineError("The server is shutting down."))
        self._stopped.set()
        if self.llm.ops.name == "mlx":
            # MLX (0.32, CPU) aborts the process at exit ("terminate called without an active
            # exception") when a thread that ran compiled functions has ended; a parked daemon
            # thread is harmless.
            threading.Event().wait()

    def _admit(self) -> None:
        while self._waiting and len(self._prefilling) + len(self._running) < self.max_seqs:
            seq = self._waiting.popleft()
            if seq.cancelled:
                continue
            llm = self.llm
            # Made here: MLX arrays (the sampler's key, its bias) belong to the thread that creates them.
            seq.sampler = Sampler(llm.ops, seq.params, llm.generation_defaults, llm.vocab_size)
            seq.out = OutputBuilder(llm, seq.prompt_ids, seq.params, seq.max_tokens, seq.sampler,
                                    start=seq.submitted_at)
            seq.sampler.observe_prompt(seq.prompt_ids)
            seq.caches = llm.model.make_caches()
            if seq.params.prompt_logprobs:
                seq.out.prompt_logprobs = [first_entry(llm, seq.prompt_ids)]
            self._prefilling.append(seq)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._prefilling if s.cancelled]:
            self._prefilling.remove(seq)
            self._finish(seq)
        for seq in [s for s in self._running if s.cancelled]:
            self._leave(seq)
            self._finish(seq)
        if self._waiting and any(s.cancelled for s in self._waiting):
            with self._cond:
                self._waiting = deque(s for s in self._waiting if not s.cancelled)

    def _prefill_some(self) -> None:
        """Whole chunks of the waiting prompts, oldest first, about one chunk's worth of tokens in all."""
        budget = self.llm.prefill_chunk
        while self._prefilling and budget > 0:
            seq = self._prefilling[0]
            try:
                budget -= self._prefill_chunk(seq)
            except Exception as exc:  # a bad sequence must not take the engine down
                log.exception("Prefill failed")
                if seq in self._prefilling:
                    self._prefilling.remove(seq)
                elif seq in self._running:
                    self._leave(seq)
                self._fail(seq, EngineError(f"Prefill failed ({type(exc).__name__}: {exc})."))

    def _prefill_chunk(self, seq: Sequence) -> int:
        """Run one chunk of `seq`'s prompt; after the last, sample its first token. Returns the chunk's size."""
        llm, ops, model = self.llm, self.llm.ops, self.llm.model
        ids, chunk = seq.prompt_ids, llm.prefill_chunk
        start = seq.prefilled
        stop = min(start + chunk, len(ids))
        tokens = ops.asarray(np.asarray(ids[start:stop], dtype=np.int64)[None, :])
        last = stop == len(ids)
        logits = None
        if seq.params.prompt_logprobs:
            rows = ops.astype(model(tokens, seq.caches)[0], "float32")
            seq.out.prompt_logprobs += score_chunk(llm, ids, rows, start, stop, seq.params.top_logprobs)
            logits = rows[-1]
        elif last:
            # The same calls as engine.generate.prefill, so the numbers match the single-stream path.
            logits = ops.astype(model(tokens, seq.caches, last_only=True)[0, -1], "float32")
        else:
            ops.eval(model.model(tokens, seq.caches))
        seq.prefilled = stop
        if last:
            self.metrics.prompt_tokens.inc(len(ids))
            self._prefilling.remove(seq)
            token = int(ops.item(seq.sampler.sample(seq.sampler.process(logits))))
            chunk = self._next_chunk(seq, token, logits)
            if not chunk.finish_reason:
                seq.row = self._batch.add(seq.caches)
                self._running.append(seq)
            seq.caches = None  # its tokens now live in the batch (or nowhere)
            seq.request._put(seq.index, chunk)
        return stop - start

    def _decode_step(self) -> None:
        if not self._running:
            return
        ops, running, batch = self.llm.ops, self._running, self._batch
        try:
            batch.before_step()
            tokens = ops.asarray(np.asarray([[seq.next_token] for seq in running], dtype=np.int64))
            logits = self.llm.model(tokens, batch.caches)
            batch.advance()
            rows = ops.astype(logits[:, -1], "float32")
            token_ids = self._sample(running, rows)
        except Exception as exc:
            log.exception("Decode step failed")
            failed, self._running = list(running), []
            self._batch = self._new_batch()
            for seq in failed:
                self._fail(seq, EngineError(f"Generation failed ({type(exc).__name__}: {exc})."))
            return
        chunks = [(seq, self._next_chunk(seq, token, rows[i] if seq.out.want_logprobs else None))
                  for i, (seq, token) in enumerate(zip(list(running), token_ids, strict=True))]
        for seq, chunk in chunks:
            if chunk.finish_reason:
                self._leave(seq)
        # Handed over after the bookkeeping, so a reader that sees its last chunk also sees it gone.
        for seq, chunk in chunks:
            seq.request._put(seq.index, chunk)

    def _sample(self, running: list[Sequence], rows) -> list[int]:
        """Every row's next token with its own sampler; one device-to-host transfer for all of them."""
        ops = self.llm.ops
        if all(s.sampler.greedy and not s.sampler.needs_history and s.sampler.bias is None for s in running):
            return ops.tolist(ops.argmax(rows, axis=-1))
        picks = [seq.sampler.sample(seq.sampler.process(rows[i])).reshape(1) for i, seq in enumerate(running)]
        return ops.tolist(ops.concat(picks, axis=0))

    def _next_chunk(self, seq: Sequence, token_id: int, logits) -> Chunk:
        """Record one sampled token; the chunk its reader gets (finish_reason set when it is the last)."""
        now = time.perf_counter()
        if seq.out.first_at is None:
            self.metrics.time_to_first_token.observe(now - seq.submitted_at)
        else:
            self.metrics.inter_token_latency.observe(now - seq.last_token_at)
        seq.last_token_at = now
        self.metrics.generated_tokens.inc()
        seq.sampler.observe(token_id)
        chunk = seq.out.add(token_id, logits)
        seq.next_token = token_id
        if chunk.finish_reason:
            seq.completion = seq.out.completion
        return chunk

    def _leave(self, seq: Sequence) -> None:
        """Take a running sequence out of the batch; the last row moves into its place."""
        row = seq.row
        self._batch.remove(row)
        last = self._running.pop()
        if last is not seq:
            self._running[row] = last
            last.row = row
        seq.row = -1

    def _finish(self, seq: Sequence) -> None:
        """A cancelled sequence: free its state; its reader has gone."""
        seq.caches = None
        if seq.out is not None:
            seq.out.cancel()
            seq.completion = seq.out.completion

    def _fail_all(self, error: Exception) -> None:
        failed = [*self._prefilling, *self._running]
        self._prefilling, self._running = [], []
        self._batch = self._new_batch()
        for seq in failed:
            self._fail(seq, error)

    def _fail(self, seq: Sequence, error: Exception) -> None:
        seq.caches = None
        seq.request._put(seq.index, error)
