"""The token loop: prefill the prompt in chunks, then decode one token per step.

`generate_tokens` yields token ids; everything about text (detokenizing, stop
strings, usage) is layered on top in api.py, so batching code can reuse it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mistralrs.backends.ops import Ops, Tensor
from mistralrs.engine.sampling import Sampler


@dataclass
class Step:
    token_id: int
    logits: Tensor | None  # float32 (vocab,) row the token was sampled from (for logprobs)


def prefill(model, ops: Ops, prompt_ids: list[int], caches, chunk: int) -> Tensor:
    """Run the prompt through the model; returns the float32 logits of its last position.

    Long prompts go in chunks so activation memory stays bounded and a server can
    interleave other sequences between chunks.
    """
    ids = np.asarray(prompt_ids, dtype=np.int64)[None, :]
    total = ids.shape[1]
    for start in range(0, total - chunk, chunk) if total > chunk else ():
        model.model(ops.asarray(ids[:, start : start + chunk]), caches)
        _eval_caches(ops, caches)
    last = ids[:, ((total - 1) // chunk) * chunk if total > chunk else 0 :]
    if ops.lazy and last.shape[1] > 1:
        # The caches need every layer's keys and values, but not the last layer's attention output
        # and feed-forward over these rows, which only the logits need: evaluating just the caches
        # lets a lazy backend skip that work (on the 30-layer benchmark model, MLX's CPU prefill of
        # 512 tokens went from 20.8 to 20.0 s), and the last position then runs alone, as mlx-lm
        # prefills.
        model.model(ops.asarray(last[:, :-1]), caches)
        _eval_caches(ops, caches)
        last = last[:, -1:]
    logits = model(ops.asarray(last), caches, last_only=True)
    return ops.astype(logits[0, -1], "float32")


def _eval_caches(ops: Ops, caches) -> None:
    ops.eval(*(t for cache in caches for t in (cache.keys, cache.values) if t is not None))


def generate_tokens(
    model,
    ops: Ops,
    prompt_ids: list[int],
    sampler: Sampler,
    *,
    prefill_chunk: int = 1024,
    keep_logits: bool = False,
) -> Iterator[Step]:
    """Yield sampled tokens forever; the caller decides when to stop (closing the generator)."""
    caches = model.make_caches()
    sampler.observe_prompt(prompt_ids)
    logits = prefill(model, ops, prompt_ids, caches, prefill_chunk)
    pipelined = ops.name == "mlx" and not sampler.needs_history and not keep_logits
    token = sampler.sample(sampler.process(logits))
    while True:
        if pipelined:
            # MLX is lazy: queue the next step's graph before reading this token, so the
            # device works while the host detokenizes and streams.
            next_logits = ops.astype(model(token.reshape(1, 1), caches)[0, -1], "float32")
            next_token = sampler.sample(sampler.process(next_logits))
            ops.async_eval(next_token)
        token_id = int(ops.item(token))
        sampler.observe(token_id)
        yield Step(token_id, logits if keep_logits else None)
        if pipelined:
            token = next_token
            continue
        logits = ops.astype(model(token.reshape(1, 1), caches)[0, -1], "float32")
        token = sampler.sample(sampler.process(logits))
