"""Token log-probabilities in the two shapes the OpenAI API uses (chat and legacy completions)."""

from __future__ import annotations

from mistralrs.engine.params import TokenLogprob


def _token_bytes(text: str) -> list[int]:
    return list(text.encode("utf-8", errors="replace"))


def chat_logprob_entry(lp: TokenLogprob) -> dict:
    """One element of `choices[].logprobs.content` in a chat completion."""
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": _token_bytes(lp.token),
        "top_logprobs": [
            {"token": text, "logprob": value, "bytes": _token_bytes(text)} for _, text, value in lp.top
        ],
    }


def chat_logprobs(lps: list[TokenLogprob] | None) -> dict | None:
    return None if lps is None else {"content": [chat_logprob_entry(lp) for lp in lps]}


def completion_logprobs(lps: list[TokenLogprob] | None, first_offset: int) -> dict | None:
    """`choices[].logprobs` of /v1/completions; text_offset counts characters from the start of `text`.

    With `echo`, the echoed prompt has no log-probabilities here: only generated tokens do.
    """
    if lps is None:
        return None
    offsets, offset = [], first_offset
    for lp in lps:
        offsets.append(offset)
        offset += len(lp.token)
    return {
        "tokens": [lp.token for lp in lps],
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [{text: value for _, text, value in lp.top} for lp in lps],
        "text_offset": offsets,
    }
