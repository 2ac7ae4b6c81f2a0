"""GET /metrics: Prometheus text that counts requests, tokens and latencies, and shows the queue."""

from __future__ import annotations

import re

import falcon.testing
import pytest
from conftest import selected_backends

from mistralrs.engine.api import load
from mistralrs.engine.metrics import Counter, Histogram, render
from mistralrs.http.app import create_app

MODEL = "tiny"
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? [-+0-9.eInf]+$')


@pytest.fixture(scope="module", params=selected_backends())
def app(request, tiny_model_dir) -> falcon.testing.TestClient:
    llm = load(tiny_model_dir("qwen3"), backend=request.param, cpu=True)
    return falcon.testing.TestClient(create_app(llm, MODEL, max_seqs=3))


def scrape(app) -> dict[str, float]:
    result = app.simulate_get("/metrics")
    assert result.status_code == 200 and result.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in result.text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) \S+ .+$", line), line
            continue
        assert SAMPLE.match(line), f"not a Prometheus sample: {line!r}"
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


def test_metrics_count_requests_tokens_and_latencies(app):
    before = scrape(app)
    answer = app.simulate_post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                             "max_tokens": 4, "n": 2, "ignore_eos": True})
    assert answer.status_code == 200
    streamed = app.simulate_post("/v1/completions", json={"prompt": "abc", "max_tokens": 3, "stream": True,
                                                          "ignore_eos": True})
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    assert app.simulate_post("/v1/completions", json={"prompt": "abc", "temperature": 9}).status_code == 400
    after = scrape(app)

    def grew(name):
        return after.get(name, 0) - before.get(name, 0)

    chat_ok = 'mistralrs_http_requests_total{endpoint="/v1/chat/completions",method="POST",status="200"}'
    assert grew(chat_ok) == 1
    assert grew('mistralrs_http_requests_total{endpoint="/v1/completions",method="POST",status="400"}') == 1
    assert grew('mistralrs_http_requests_total{endpoint="/v1/completions",method="POST",status="200"}') == 1
    model = '{model="tiny"}'
    usage = answer.json["usage"]
    assert grew(f"mistralrs_generated_tokens_total{model}") == 2 * 4 + 3
    assert grew(f"mistralrs_prompt_tokens_total{model}") == 2 * usage["prompt_tokens"] + 2  # "abc" is 2 tokens
    assert grew(f"mistralrs_time_to_first_token_seconds_count{model}") == 3  # one per sequence
    assert grew(f"mistralrs_inter_token_latency_seconds_count{model}") == 2 * 3 + 2
    assert after['mistralrs_time_to_first_token_seconds_bucket{model="tiny",le="+Inf"}'] == \
        after[f"mistralrs_time_to_first_token_seconds_count{model}"]
    assert after[f"mistralrs_running_sequences{model}"] == 0 and after[f"mistralrs_waiting_sequences{model}"] == 0
    assert after[f"mistralrs_max_sequences{model}"] == 3


def test_unknown_paths_share_one_label(app):
    app.simulate_get("/no/such/path")
    app.simulate_get("/another/one")
    samples = scrape(app)
    assert samples['mistralrs_http_requests_total{endpoint="unmatched",method="GET",status="404"}'] >= 2
    assert not any("/no/such/path" in name for name in samples)


def test_metrics_route_is_in_the_openapi_document(app):
    document = app.simulate_get("/openapi.json").json
    assert "text/plain" in document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    responses = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "503" in responses and "Retry-After" in responses["503"]["headers"]


def test_render_escapes_labels_and_accumulates_buckets():
    counter = Counter("requests_total", "Requests.")
    counter.inc(labels={"path": 'a"b\\c'})
    histogram = Histogram("latency_seconds", "Latency.", buckets=(0.1, 1.0))
    for value in (0.05, 0.5, 5.0):
        histogram.observe(value)
    text = render([counter, histogram])
    assert 'requests_total{path="a\\"b\\\\c"} 1' in text
    assert 'latency_seconds_bucket{le="0.1"} 1' in text and 'latency_seconds_bucket{le="1"} 2' in text
    assert 'latency_seconds_bucket{le="+Inf"} 3' in text and "latency_seconds_count 3" in text
    assert "# TYPE latency_seconds histogram" in text
