"""GET /health: liveness for load balancers and container orchestrators."""

from __future__ import annotations

import falcon


class Health:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # Answers without touching the model, so it stays fast while a generation runs.
        resp.media = {"status": "ok"}
