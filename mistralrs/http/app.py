"""The Falcon WSGI application: routes and error handling around the loaded model(s)."""

from __future__ import annotations

import falcon

from mistralrs.engine.api import LLM
from mistralrs.engine.scheduler import Scheduler
from mistralrs.http.chat import ChatCompletions
from mistralrs.http.completions import Completions
from mistralrs.http.errors import install_error_handlers
from mistralrs.http.health import Health
from mistralrs.http.metrics import HttpMetrics, Metrics
from mistralrs.http.models import Models
from mistralrs.http.openapi import OpenApi
from mistralrs.http.routing import ModelRouter
from mistralrs.http.served_model import ServedModel, ServedModels


def create_app(llm: LLM, model_id: str | None = None, *, server_seed: int | None = None, max_seqs: int = 32,
               max_waiting: int | None = None, request_log=None) -> falcon.App:
    """The app for `llm`, served under `model_id` (default: the id it was loaded from).

    max_seqs: sequences generated together (--max-seqs); max_waiting: sequences that may queue
    for a place before requests get 503 (default: twice max_seqs); request_log: -l/--log's RequestLog.
    """
    return create_multi_app([(llm, model_id or llm.model_id)], server_seed=server_seed, max_seqs=max_seqs,
                            max_waiting=max_waiting, request_log=request_log)


def create_multi_app(models: list[tuple[LLM, str]], *, default_model_id: str | None = None,
                     server_seed: int | None = None, max_seqs: int = 32, max_waiting: int | None = None,
                     request_log=None) -> falcon.App:
    """The app for several models, each request going to the one its `model` field names.

    Every model gets its own scheduler (engine thread) with the same limits.
    """
    served = ServedModels([
        ServedModel(llm, model_id, server_seed=server_seed,
                    scheduler=Scheduler(llm, max_seqs=max_seqs, max_waiting=max_waiting))
        for llm, model_id in models
    ], default_model_id)
    http_metrics = HttpMetrics()
    app = falcon.App(media_type=falcon.MEDIA_JSON, middleware=[http_metrics])
    install_error_handlers(app)
    for path, handler in (("/v1/chat/completions", ChatCompletions), ("/v1/completions", Completions)):
        def handler_for(model: ServedModel, handler=handler):
            return handler(model, request_log)

        # One model: its handler directly, which names that model in its 404 for any other.
        app.add_route(path, handler_for(served.default) if len(served) == 1 else ModelRouter(served, handler_for))
    app.add_route("/v1/models", Models(served))
    app.add_route("/health", Health())
    app.add_route("/metrics", Metrics(http_metrics, list(served)))
    app.add_route("/openapi.json", OpenApi())
    return app
