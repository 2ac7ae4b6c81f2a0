"""Several models behind one app: /v1/models lists them, each request goes to the model its
`model` field names, and everything the handlers check still reaches them through the router.
"""

from __future__ import annotations

import json

import falcon.testing
import pytest
from conftest import selected_backends

from mistralrs.engine.api import load
from mistralrs.http.app import create_multi_app

QWEN, LLAMA = "tiny-qwen3", "tiny-llama"
CHAT = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module", params=selected_backends())
def models(request, tiny_model_dir):
    return [(load(tiny_model_dir("qwen3"), backend=request.param, cpu=True), QWEN),
            (load(tiny_model_dir("llama"), backend=request.param, cpu=True), LLAMA)]


def client(models, **kwargs) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_multi_app(models, **kwargs))


def post(app: falcon.testing.TestClient, path: str, body) -> falcon.testing.Result:
    return app.simulate_post(path, body=json.dumps(body), headers={"Content-Type": "application/json"})


def test_models_lists_all(models):
    data = client(models).simulate_get("/v1/models").json["data"]
    assert [m["id"] for m in data] == [QWEN, LLAMA] and all(m["object"] == "model" for m in data)


@pytest.mark.parametrize("name", [QWEN, LLAMA])
def test_each_request_goes_to_the_named_model(models, name):
    app = client(models)
    chat = post(app, "/v1/chat/completions", {"model": name, "messages": CHAT, "max_tokens": 2})
    assert chat.status_code == 200 and chat.json["model"] == name
    text = post(app, "/v1/completions", {"model": name, "prompt": "Once", "max_tokens": 2})
    assert text.status_code == 200 and text.json["model"] == name
    stream = post(app, "/v1/completions", {"model": name, "prompt": "Once", "max_tokens": 2, "stream": True})
    assert stream.status_code == 200 and f'"model": "{name}"' in stream.text and "[DONE]" in stream.text


def test_default_model(models):
    first = client(models)  # without default_model_id: the first model
    assert post(first, "/v1/completions", {"prompt": "x", "max_tokens": 1}).json["model"] == QWEN
    chosen = client(models, default_model_id=LLAMA)
    for body in ({"prompt": "x", "max_tokens": 1}, {"model": "default", "prompt": "x", "max_tokens": 1}):
        assert post(chosen, "/v1/completions", body).json["model"] == LLAMA


def test_unknown_model_is_404_in_openai_shape(models):
    result = post(client(models), "/v1/chat/completions", {"model": "gpt-4", "messages": CHAT})
    assert result.status_code == 404
    error = result.json["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model" and error["type"]
    assert "gpt-4" in error["message"] and QWEN in error["message"] and LLAMA in error["message"]


def test_handlers_still_check_the_body(models):
    app = client(models)
    bad_json = app.simulate_post("/v1/completions", body="{", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json["error"]["message"]
    wrong_type = app.simulate_post("/v1/completions", body="{}", headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    not_a_string = post(app, "/v1/completions", {"model": 3, "prompt": "x"})
    assert not_a_string.status_code == 400 and not_a_string.json["error"]["param"] == "model"
