"""Choosing the next token from one row of logits, on the device.

Two stages, as in mlx-lm: logits processors change the scores (penalties, bias),
then the sampler picks (greedy, or temperature with top-k / top-p / min-p via
the Gumbel-max trick). Only the chosen id crosses to the host.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from mistralrs.backends.ops import Ops, Tensor
from mistralrs.engine.params import SamplingParams


@dataclass
class ResolvedSampling:
    """SamplingParams with the model's defaults filled in."""

    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repetition_penalty: float

    @classmethod
    def from_params(cls, params: SamplingParams, defaults: dict) -> ResolvedSampling:
        def pick(value, key, fallback):
            return value if value is not None else defaults.get(key, fallback)

        sampling_default = defaults.get("do_sample", False)
        temperature = pick(params.temperature, "temperature", 1.0 if sampling_default else 0.0)
        if params.temperature is None and not sampling_default:
            temperature = 0.0  # HF semantics: without do_sample the model is decoded greedily
        return cls(
            temperature=float(temperature),
            top_k=int(pick(params.top_k, "top_k", 0) or 0),
            top_p=float(pick(params.top_p, "top_p", 1.0) or 1.0),
            min_p=float(pick(params.min_p, "min_p", 0.0) or 0.0),
            repetition_penalty=float(pick(params.repetition_penalty, "repetition_penalty", 1.0) or 1.0),
        )


class Sampler:
    def __init__(self, ops: Ops, params: SamplingParams, defaults: dict, vocab_size: int):
        self.ops = ops
        self.params = params
        self.cfg = ResolvedSampling.from_params(params, defaults)
        self.vocab_size = vocab_size
        self.rng = ops.make_rng(params.seed)
        self.generated: Counter[int] = Counter()
        self.context: set[int] = set()
        self.bias = None
        if params.logit_bias:
            ids = np.array([int(k) for k in params.logit_bias], dtype=np.int64)
            values = np.array(list(params.logit_bias.values()), dtype=np.float32)
            self.bias = (ops.asarray(ids), ops.asarray(values))

    @property
    def greedy(self) -> bool:
        return self.cfg.temperature == 0.0

    @property
    def needs_history(self) -> bool:
        """Whether the next token depends on the host knowing the previous one."""
        p = self.params
        return self.cfg.repetition_penalty != 1.0 or bool(p.presence_penalty) or bool(p.frequency_penalty)

    def observe_prompt(self, ids: list[int]) -> None:
        self.context.update(ids)

    def observe(self, token_id: int) -> None:
        self.context.add(token_id)
        self.generated[token_id] += 1

    def process(self, logits: Tensor) -> Tensor:
        """Penalties and bias on a float32 (vocab,) row."""
        ops, p = self.ops, self.params
        if self.cfg.repetition_penalty != 1.0 and self.context:
            ids = ops.asarray(np.fromiter(self.context, dtype=np.int64))
            scores = ops.take(logits, ids)
            penalty = self.cfg.repetition_penalty
            scores = ops.where(scores > 0, scores / penalty, scores * penalty)
            logits = ops.scatter(logits, ids, scores)
        if (p.presence_penalty or p.frequency_penalty) and self.generated:
            ids = np.fromiter(self.generated.keys(), dtype=np.int64)
            counts = np.fromiter(self.generated.values(), dtype=np.float32)
            delta = p.presence_penalty + p.frequency_penalty * counts
            ids_t = ops.asarray(ids)
            logits = ops.scatter(logits, ids_t, ops.take(logits, ids_t) - ops.asarray(delta))
        if self.bias is not None:
            ids, values = self.bias
            logits = ops.scatter(logits, ids, ops.take(logits, ids) + values)
        return logits

    def sample(self, logits: Tensor) -> Tensor:
        """The chosen token id as a 0-d device tensor."""
        ops, cfg = self.ops, self.cfg
        if self.greedy:
            return ops.argmax(logits)
        logits = logits / cfg.temperature
        if cfg.top_k and cfg.top_k < self.vocab_size:
            values, indices = ops.topk(logits, cfg.top_k)
        elif cfg.top_p < 1.0 or cfg.min_p > 0.0:
            values, indices = ops.sort_descending(logits)
        else:
            return ops.argmax(logits + ops.gumbel(tuple(logits.shape), self.rng))
        neg_inf = float("-inf")
        if cfg.top_p < 1.0:
            probs = ops.softmax(values)
            mass_before = ops.cumsum(probs) - probs
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            values = ops.where(mass_before > cfg.top_p, neg_inf, values)
        if cfg.min_p > 0.0:
            probs = ops.softmax(values)
            values = ops.where(probs < cfg.min_p * probs[0], neg_inf, values)
        choice = ops.argmax(values + ops.gumbel(tuple(values.shape), self.rng))
        return indices[choice]

    def logprobs(self, logits: Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
        """Log-probability of `token` under the model's raw distribution, and the top alternatives."""
        ops = self.ops
        lp = ops.log_softmax(logits)
        chosen = float(ops.item(lp[token]))
        if not top:
            return chosen, []
        values, indices = ops.topk(lp, top)
        return chosen, list(zip(ops.tolist(indices), ops.tolist(values), strict=True))
