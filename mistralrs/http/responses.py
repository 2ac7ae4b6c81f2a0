"""Pieces shared by the chat and completions responses: ids, usage."""

from __future__ import annotations

import time
import uuid

from mistralrs.engine.params import Completion


def response_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage_body(prompt_lengths: list[int], completions: list[Completion]) -> dict:
    """OpenAI counts each prompt once, however many choices were generated from it."""
    prompt_tokens = sum(prompt_lengths)
    completion_tokens = sum(c.usage.completion_tokens for c in completions)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
