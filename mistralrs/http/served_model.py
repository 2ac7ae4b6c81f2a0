"""The one model this server serves: its public id, its scheduler, and the per-request seeds."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

from mistralrs.engine.api import LLM
from mistralrs.engine.scheduler import Scheduler
from mistralrs.http.errors import ApiError

DEFAULT_MODEL_NAMES = ("default",)  # mistral.rs routes "default" (or no model) to the loaded model


@dataclass
class ServedModel:
    llm: LLM
    model_id: str
    server_seed: int | None = None  # `mistralrs --seed`: requests without a seed draw theirs from it
    created: int = field(default_factory=lambda: int(time.time()))
    # The engine thread that batches this model's requests; one per served model.
    scheduler: Scheduler | None = None

    def __post_init__(self):
        if self.scheduler is None:
            self.scheduler = Scheduler(self.llm)
        self._seeds = random.Random(self.server_seed) if self.server_seed is not None else None
        self._seeds_lock = threading.Lock()

    def check_requested(self, name: str | None) -> None:
        if name is None or name in DEFAULT_MODEL_NAMES or name == self.model_id:
            return
        raise ApiError(404, f"The model `{name}` does not exist on this server; it serves `{self.model_id}` "
                            "(or send `default`).", param="model", code="model_not_found")

    def request_seed(self, seed: int | None) -> int | None:
        """The request's seed, or one drawn from the server's seed so a seeded server is reproducible."""
        if seed is not None or self._seeds is None:
            return seed
        with self._seeds_lock:
            return self._seeds.randrange(2**31)
