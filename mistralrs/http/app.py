"""The Falcon WSGI application: routes and error handling around the loaded model(s)."""

from __future__ import annotations

import falcon

from mistralrs.engine.api import LLM
from mistralrs.http.chat import ChatCompletions
from mistralrs.http.completions import Completions
from mistralrs.http.errors import install_error_handlers
from mistralrs.http.health import Health
from mistralrs.http.models import Models
from mistralrs.http.openapi import OpenApi
from mistralrs.http.routing import ModelRouter
from mistralrs.http.served_model import ServedModel, ServedModels


def create_app(llm: LLM, model_id: str | None = None, *, server_seed: int | None = None) -> falcon.App:
    """The app for `llm`, served under `model_id` (default: the id it was loaded from)."""
    return create_multi_app([(llm, model_id or llm.model_id)], server_seed=server_seed)


def create_multi_app(models: list[tuple[LLM, str]], *, default_model_id: str | None = None,
                     server_seed: int | None = None) -> falcon.App:
    """The app for several models, each request going to the one its `model` field names."""
    served = ServedModels([ServedModel(llm, model_id, server_seed=server_seed) for llm, model_id in models],
                          default_model_id)
    app = falcon.App(media_type=falcon.MEDIA_JSON)
    install_error_handlers(app)
    for path, handler in (("/v1/chat/completions", ChatCompletions), ("/v1/completions", Completions)):
        # One model: its handler directly, which names that model in its 404 for any other.
        app.add_route(path, handler(served.default) if len(served) == 1 else ModelRouter(served, handler))
    app.add_route("/v1/models", Models(served))
    app.add_route("/health", Health())
    app.add_route("/openapi.json", OpenApi())
    return app
