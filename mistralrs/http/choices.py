"""One scheduled sequence per returned choice: n choices per prompt, each with its own seed.

Every sequence of a request is validated (sampling ranges, prompt length) and
queued together before the response starts, so a bad request is a 400 and a
full queue a 503, never a broken stream. The scheduler then generates the
choices side by side, batched with other requests.
"""

from __future__ import annotations

import dataclasses

import falcon

from mistralrs.engine.params import SamplingParams
from mistralrs.engine.scheduler import QueueFull, RequestStream
from mistralrs.errors import UserError
from mistralrs.http.errors import server_busy
from mistralrs.http.served_model import ServedModel


def choice_seed(seed: int | None, choice: int) -> int | None:
    # Distinct but reproducible seeds: the same request gives the same n answers, and choice 0
    # matches a request with n=1 and the same seed.
    return None if seed is None else seed + choice


def submit_choices(served: ServedModel, prompts: list[list[int]], params: SamplingParams, n: int,
                   prompt_param: str) -> RequestStream:
    """Queue n choices per prompt; choice i answers prompt i // n."""
    sequences = []
    for ids in prompts:
        for j in range(n):
            choice_params = dataclasses.replace(params, seed=choice_seed(params.seed, j), stop=list(params.stop))
            sequences.append((ids, choice_params))
    try:
        return served.scheduler.submit(sequences)
    except UserError as exc:
        if exc.param in ("messages", "prompt"):  # the engine cannot know which field held the prompt
            exc.param = prompt_param
        raise
    except QueueFull as exc:
        raise server_busy(str(exc), exc.retry_after_s) from None


def disconnect_check(req: falcon.Request):
    """A callable that tells whether the client has gone, or None where the server cannot tell.

    waitress provides one when the server reads ahead on each connection (http.server sets
    channel_request_lookahead), so a request nobody waits for any more is cancelled.
    """
    return req.env.get("waitress.client_disconnected")
