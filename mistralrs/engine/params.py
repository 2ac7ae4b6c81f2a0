"""Plain data that crosses the engine's public API: what to sample, what came out."""

from __future__ import annotations

from dataclasses import dataclass, field

from mistralrs.errors import UserError


@dataclass
class SamplingParams:
    """How to pick tokens. `None` means "the model's generation_config default"."""

    max_tokens: int | None = None
    temperature: float | None = None  # 0 = greedy
    top_k: int | None = None  # 0 or None = off
    top_p: float | None = None  # 1.0 or None = off
    min_p: float | None = None  # 0 or None = off
    repetition_penalty: float | None = None  # 1.0 or None = off (multiplicative, as HF)
    presence_penalty: float = 0.0  # OpenAI semantics (additive)
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # stop strings, not included in the text
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    # Also score the prompt's own tokens (the legacy completions API's `echo` with `logprobs`),
    # with top_logprobs alternatives each: Completion.prompt_logprobs.
    prompt_logprobs: bool = False

    def validate(self, vocab_size: int | None = None) -> SamplingParams:
        """Raise UserError naming the first bad field; return self for chaining."""

        def bad(name, why):
            raise UserError(f"Invalid sampling parameter `{name}`: {why}", param=name)

        if self.max_tokens is not None and self.max_tokens < 1:
            bad("max_tokens", f"must be at least 1, got {self.max_tokens}.")
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:
            bad("temperature", f"must be between 0 and 2, got {self.temperature}.")
        if self.top_k is not None and self.top_k < 0:
            bad("top_k", f"must be 0 (off) or a positive integer, got {self.top_k}.")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            bad("top_p", f"must be in (0, 1], got {self.top_p}.")
        if self.min_p is not None and not 0.0 <= self.min_p <= 1.0:
            bad("min_p", f"must be in [0, 1], got {self.min_p}.")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            bad("repetition_penalty", f"must be positive, got {self.repetition_penalty}.")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                bad(name, f"must be between -2 and 2, got {getattr(self, name)}.")
        if not 0 <= self.top_logprobs <= 20:
            bad("top_logprobs", f"must be between 0 and 20, got {self.top_logprobs}.")
        if vocab_size is not None:
            for tid in list(self.logit_bias or {}) + list(self.stop_token_ids):
                if not 0 <= int(tid) < vocab_size:
                    bad("logit_bias", f"token id {tid} is outside the vocabulary (0..{vocab_size - 1}).")
        return self


@dataclass
class TokenLogprob:
    token_id: int
    token: str
    logprob: float | None  # None only for a prompt's first token, which nothing predicts
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (id, text, logprob), best first


@dataclass
class Chunk:
    """One streamed step: the new text (may be "" while a UTF-8 character is incomplete)."""

    text: str
    token_id: int | None
    finish_reason: str | None = None  # "stop" | "length" | None while running
    logprob: TokenLogprob | None = None


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Timing:
    ttft_s: float  # prompt submitted -> first token sampled
    decode_s: float  # first token -> last token

    def prefill_tok_s(self, prompt_tokens: int) -> float:
        return prompt_tokens / self.ttft_s if self.ttft_s > 0 else 0.0

    def decode_tok_s(self, completion_tokens: int) -> float:
        steps = completion_tokens - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    usage: Usage
    timing: Timing
    logprobs: list[TokenLogprob] | None = None
    # One entry per prompt token when asked for (SamplingParams.prompt_logprobs).
    prompt_logprobs: list[TokenLogprob] | None = None
