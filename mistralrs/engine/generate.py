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
        hidden = model.model(ops.asarray(ids[:, start : start + chunk]), caches)
        ops.eval(hidden)
    last_start = ((total - 1) // chunk) * chunk if total > chunk else 0
    logits = model(ops.asarray(ids[:, last_start:]), caches, last_only=True)
    return ops.astype(logits[0, -1], "float32")


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
