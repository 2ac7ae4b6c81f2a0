"""One engine stream per returned choice: n choices per prompt, each with its own seed.

All streams are created (and so validated: sampling ranges, prompt length) before
the response starts, so a bad request is a 400 and never a broken stream. They run
one after another: the LLM generates one sequence at a time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mistralrs.engine.api import LLM, CompletionStream
from mistralrs.engine.params import SamplingParams
from mistralrs.errors import UserError


@dataclass
class PlannedChoice:
    index: int
    prompt_index: int
    stream: CompletionStream


def choice_seed(seed: int | None, choice: int) -> int | None:
    # Distinct but reproducible seeds: the same request gives the same n answers, and choice 0
    # matches a request with n=1 and the same seed.
    return None if seed is None else seed + choice


def plan_choices(llm: LLM, prompts: list[list[int]], params: SamplingParams, n: int,
                 prompt_param: str) -> list[PlannedChoice]:
    planned = []
    for prompt_index, ids in enumerate(prompts):
        for j in range(n):
            choice_params = dataclasses.replace(params, seed=choice_seed(params.seed, j), stop=list(params.stop))
            try:
                stream = llm.stream(ids, choice_params)
            except UserError as exc:
                if exc.param in ("messages", "prompt"):  # the engine cannot know which field held the prompt
                    exc.param = prompt_param
                raise
            planned.append(PlannedChoice(len(planned), prompt_index, stream))
    return planned


def close_all(planned: list[PlannedChoice]) -> None:
    """Cancel whatever has not finished (a client that went away); finished streams ignore it."""
    for choice in planned:
        choice.stream.close()
