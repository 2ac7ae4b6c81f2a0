"""Scoring a prompt's own tokens (the legacy completions API's `echo` with `logprobs`).

The logits at position t score token t+1; the first token has nothing before it.
The scheduler scores each prefill chunk as it runs; the single-stream path runs
one scoring pass over the prompt before generating.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mistralrs.engine.params import TokenLogprob

if TYPE_CHECKING:
    from mistralrs.engine.api import LLM


def first_entry(llm: LLM, prompt_ids: list[int]) -> TokenLogprob:
    first = prompt_ids[0]
    return TokenLogprob(first, llm.tokenizer.token_text(first), None)


def score_chunk(llm: LLM, prompt_ids: list[int], rows, start: int, stop: int, top: int) -> list[TokenLogprob]:
    """Entries for prompt tokens start+1..stop, from the float32 logits `rows` of positions start..stop-1."""
    ops, tok = llm.ops, llm.tokenizer
    targets = prompt_ids[start + 1 : stop + 1]
    if not targets:
        return []
    lp = ops.log_softmax(rows[: len(targets)])
    index = ops.asarray(np.asarray(targets, dtype=np.int64)[:, None])
    chosen = [row[0] for row in ops.tolist(ops.take(lp, index))]
    alternatives = [[] for _ in targets]
    if top:
        values, indices = ops.topk(lp, top)
        alternatives = [list(zip(i, v, strict=True)) for i, v in zip(ops.tolist(indices), ops.tolist(values),
                                                                   strict=True)]
    return [TokenLogprob(token_id, tok.token_text(token_id), value, [(i, tok.token_text(i), v) for i, v in alts])
            for token_id, value, alts in zip(targets, chosen, alternatives, strict=True)]


def score_prompt(llm: LLM, prompt_ids: list[int], top: int) -> list[TokenLogprob]:
    """A whole prompt's entries, in prefill-sized chunks over caches of its own."""
    ops, model, chunk = llm.ops, llm.model, llm.prefill_chunk
    caches = model.make_caches()
    entries = [first_entry(llm, prompt_ids)]
    for start in range(0, len(prompt_ids), chunk):
        stop = min(start + chunk, len(prompt_ids))
        tokens = ops.asarray(np.asarray(prompt_ids[start:stop], dtype=np.int64)[None, :])
        rows = ops.astype(model(tokens, caches)[0], "float32")
        entries += score_chunk(llm, prompt_ids, rows, start, stop, top)
    return entries
