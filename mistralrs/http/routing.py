"""Sending each generation request to the model its body's `model` field names.

The handlers (chat, completions) each serve one model and read the body themselves, so the
router peeks at the body's `model`, then hands the handler of that model a request that
replays the same bytes. A body that is not JSON goes to the default model's handler, which
reports it as usual.
"""

from __future__ import annotations

import io
import json

import falcon

from mistralrs.http.body import MAX_BODY_BYTES
from mistralrs.http.served_model import ServedModels


class ModelRouter:
    def __init__(self, models: ServedModels, handler_for):
        """`handler_for(served)` builds the handler of one model (e.g. ChatCompletions)."""
        self.models = models
        self.handlers = {served.model_id: handler_for(served) for served in models}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.content_length is not None and req.content_length > MAX_BODY_BYTES:
            self.handlers[self.models.default.model_id].on_post(req, resp)  # it answers 413 unread
            return
        raw = req.bounded_stream.read()
        served = self.models.resolve(_model_field(raw))
        self.handlers[served.model_id].on_post(_replay(req, raw), resp)


def _model_field(raw: bytes) -> str | None:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None  # a wrong type is the handler's 400 to give


def _replay(req: falcon.Request, raw: bytes) -> falcon.Request:
    env = dict(req.env)
    env["wsgi.input"] = io.BytesIO(raw)
    env["CONTENT_LENGTH"] = str(len(raw))
    return falcon.Request(env, options=req.options)
