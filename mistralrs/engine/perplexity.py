"""Perplexity of a text under a loaded model: how quantization is judged against full precision.

exp(mean negative log-likelihood of each token given the ones before it), with the
text run through the model in chunks over one KV cache, as llama.cpp's
`llama-perplexity` does within a context window.
"""

from __future__ import annotations

import math

import numpy as np


def perplexity(llm, text: str, chunk: int = 256, max_tokens: int | None = None) -> float:
    ids = llm.encode(text)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError("perplexity needs a text of at least two tokens")
    ops, model = llm.ops, llm.model
    caches = model.make_caches()
    nll = 0.0
    for start in range(0, len(ids) - 1, chunk):
        window = ids[start : start + chunk + 1]  # inputs and the token after the last one
        inputs = np.asarray(window[:-1], dtype=np.int64)[None, :]
        logits = model(ops.asarray(inputs), caches)[0]
        logprobs = ops.to_numpy(ops.log_softmax(ops.astype(logits, "float32")))
        targets = np.asarray(window[1:])
        nll -= float(logprobs[np.arange(len(targets)), targets].sum())
    return math.exp(nll / (len(ids) - 1))
