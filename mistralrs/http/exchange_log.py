"""-l/--log on serve: each request as one JSON line when it arrives, and its answer as one when complete.

The same two-line shape `run` writes (mistralrs.cli.request_log), so one reader handles both;
the log object is passed in, so the HTTP layer does not depend on the CLI.
"""

from __future__ import annotations

from mistralrs.engine.params import Completion


class Exchange:
    def __init__(self, log, endpoint: str, model: str, body: dict):
        self.log = log
        self.endpoint = endpoint
        self.model = model
        if log is not None:
            log.request(endpoint=endpoint, model=model, body=body)

    def answered(self, response_id: str, choices: list[dict], completions: list[Completion]) -> None:
        if self.log is None:
            return
        self.log.response(endpoint=self.endpoint, model=self.model, id=response_id, choices=choices,
                          finish_reasons=[c.finish_reason for c in completions],
                          usage=[c.usage for c in completions], timing=[c.timing for c in completions])
