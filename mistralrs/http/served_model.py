"""The models this server serves: each one's public id, scheduler and per-request seeds, and which one a request names."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
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


class ServedModels:
    """Every model of a server, by id; requests without a model (or naming `default`) get the default one."""

    def __init__(self, models: list[ServedModel], default_model_id: str | None = None):
        if not models:
            raise ValueError("a server needs at least one model")
        self._by_id = {m.model_id: m for m in models}
        self.default = self._by_id[default_model_id] if default_model_id else models[0]

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def resolve(self, name: str | None) -> ServedModel:
        """The model a request's `model` field names; a 404 in OpenAI's shape for an unknown name."""
        if name is None or name in DEFAULT_MODEL_NAMES:
            return self.default
        if name in self._by_id:
            return self._by_id[name]
        served = ", ".join(f"`{m}`" for m in self._by_id)
        raise ApiError(404, f"The model `{name}` does not exist on this server; it serves {served} "
                            "(or send `default`).", param="model", code="model_not_found")
