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


def completion_logprobs(lps: list[TokenLogprob] | None, first_offset: int,
                        prompt: list[TokenLogprob] | None = None) -> dict | None:
    """`choices[].logprobs` of /v1/completions; text_offset counts characters from the start of `text`.

    `prompt`: with `echo`, the echoed prompt's own tokens, scored as OpenAI's legacy API does
    (the first has no logprob: nothing precedes it); they start at offset 0.
    """
    if lps is None:
        return None
    tokens, values, tops, offsets = [], [], [], []
    offset = 0
    for lp in prompt or []:
        tokens.append(lp.token)
        values.append(lp.logprob)
        tops.append(None if lp.logprob is None else {text: value for _, text, value in lp.top})
        offsets.append(offset)
        offset += len(lp.token)
    offset = first_offset
    for lp in lps:
        tokens.append(lp.token)
        values.append(lp.logprob)
        tops.append({text: value for _, text, value in lp.top})
        offsets.append(offset)
        offset += len(lp.token)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
