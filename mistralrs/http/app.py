"""The Falcon WSGI application: routes and error handling around one loaded model."""

from __future__ import annotations

import falcon

from mistralrs.engine.api import LLM
from mistralrs.http.chat import ChatCompletions
from mistralrs.http.completions import Completions
from mistralrs.http.errors import install_error_handlers
from mistralrs.http.health import Health
from mistralrs.http.models import Models
from mistralrs.http.openapi import OpenApi
from mistralrs.http.served_model import ServedModel


def create_app(llm: LLM, model_id: str | None = None, *, server_seed: int | None = None) -> falcon.App:
    """The app for `llm`, served under `model_id` (default: the id it was loaded from)."""
    served = ServedModel(llm, model_id or llm.model_id, server_seed=server_seed)
    app = falcon.App(media_type=falcon.MEDIA_JSON)
    install_error_handlers(app)
    app.add_route("/v1/chat/completions", ChatCompletions(served))
    app.add_route("/v1/completions", Completions(served))
    app.add_route("/v1/models", Models(served))
    app.add_route("/health", Health())
    app.add_route("/openapi.json", OpenApi())
    return app

