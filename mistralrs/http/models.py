"""GET /v1/models: the models this server serves."""

from __future__ import annotations

import falcon

from mistralrs.http.served_model import ServedModel, ServedModels


class Models:
    def __init__(self, served: ServedModels):
        self.served = served

    @staticmethod
    def model_card(model: ServedModel) -> dict:
        return {"id": model.model_id, "object": "model", "created": model.created,
                "owned_by": "local", "status": "loaded"}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"object": "list", "data": [self.model_card(m) for m in self.served]}
