"""GET /v1/models: the one model this server serves."""

from __future__ import annotations

import falcon

from mistralrs.http.served_model import ServedModel


class Models:
    def __init__(self, served: ServedModel):
        self.served = served

    def model_card(self) -> dict:
        return {"id": self.served.model_id, "object": "model", "created": self.served.created,
                "owned_by": "local", "status": "loaded"}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"object": "list", "data": [self.model_card()]}
