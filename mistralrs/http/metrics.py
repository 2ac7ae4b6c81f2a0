"""GET /metrics: Prometheus text — HTTP requests by route and status, and each served model's engine.

Engine series (tokens, time to first token, inter-token latency, running and
waiting sequences) carry a `model` label, so several served models can share
one scrape.
"""

from __future__ import annotations

import falcon

from mistralrs.engine.metrics import Counter, Gauge, render
from mistralrs.http.served_model import ServedModel

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HttpMetrics:
    """Falcon middleware counting every answered request by route template and status code."""

    def __init__(self):
        self.requests = Counter("mistralrs_http_requests_total", "HTTP requests answered, by endpoint and status.")

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        # The route template, not the raw path: unknown paths must not grow the label set without bound.
        endpoint = req.uri_template or "unmatched"
        self.requests.inc(labels={"endpoint": endpoint, "method": req.method, "status": str(resp.status_code)})


def model_series(served: ServedModel) -> list:
    scheduler = served.scheduler
    return [
        *scheduler.metrics.all(),
        Gauge("mistralrs_running_sequences", "Sequences being prefilled or decoded.", lambda: scheduler.running),
        Gauge("mistralrs_waiting_sequences", "Sequences queued for a place in the batch.", lambda: scheduler.waiting),
        Gauge("mistralrs_max_sequences", "The batch's capacity (--max-seqs).", lambda: scheduler.max_seqs),
    ]


class Metrics:
    def __init__(self, http: HttpMetrics, served: list[ServedModel]):
        self.http = http
        self.served = served

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        text = render([self.http.requests])
        for served in self.served:
            text += render(model_series(served), {"model": served.model_id})
        resp.content_type = CONTENT_TYPE
        resp.text = text
