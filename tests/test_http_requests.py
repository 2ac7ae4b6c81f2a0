"""The HTTP app in-process (falcon.testing): request validation, thinking, and errors that must not stick."""

from __future__ import annotations

import json
import shutil

import falcon.testing
import pytest
from conftest import selected_backends

from mistralrs.engine.api import load
from mistralrs.http.app import create_app
from model_fixtures import CHATML

MODEL = "tiny"
CHAT = [{"role": "user", "content": "Hi"}]
# A DeepSeek-R1-style template: with enable_thinking it opens the thinking block in the prompt.
OPENS_THINKING = CHATML.replace(
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking %}{{ '<think>\n' }}{% else %}{{ '<think>\n\n</think>\n\n' }}{% endif %}{% endif %}",
)


def with_template(source: str, folder, template: str) -> str:
    shutil.copytree(source, folder)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["chat_template"] = template
    path.write_text(json.dumps(config))
    return str(folder)


@pytest.fixture(scope="module", params=selected_backends())
def llm(request, tiny_model_dir, tmp_path_factory):
    folder = with_template(tiny_model_dir("qwen3"), tmp_path_factory.mktemp("thinking") / "model", OPENS_THINKING)
    return load(folder, backend=request.param, cpu=True)


@pytest.fixture(scope="module")
def app(llm) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_app(llm, MODEL))


def post(app, path: str, body: dict):
    return app.simulate_post(path, json=body)


def chat(app, **fields):
    return post(app, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 3, "ignore_eos": True, **fields})


def sse_payloads(result) -> list[dict]:
    events = result.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    return [json.loads(event.removeprefix("data: ")) for event in events[:-2]]


@pytest.mark.parametrize("fields, param", [
    ({"messages": None}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"content": "no role"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}, "messages[0].content[0].text"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"n": 0}, "n"),
    ({"n": 1000}, "n"),
    ({"stop": 5}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"3": 500}}, "logit_bias.3"),
    ({"logit_bias": {"99999": 1}}, "logit_bias"),
    ({"seed": "x"}, "seed"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ({"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
    ({"chat_template_kwargs": "x"}, "chat_template_kwargs"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format.type"),
])
def test_bad_chat_fields_get_a_400_naming_them(app, fields, param):
    result = chat(app, **fields)
    assert result.status_code == 400, result.text
    error = result.json["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


@pytest.mark.parametrize("fields, param", [
    ({"prompt": None}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": [99999]}, "prompt"),
    ({"prompt": "x " * 600}, "prompt"),
    ({"logprobs": 50}, "logprobs"),
    ({"best_of": 3}, "best_of"),
    ({"suffix": "end"}, "suffix"),
])
def test_bad_completion_fields_get_a_400_naming_them(app, fields, param):
    result = post(app, "/v1/completions", {"prompt": "a", "max_tokens": 2, **fields})
    assert result.status_code == 400, result.text
    assert result.json["error"]["param"] == param


def test_unknown_fields_are_ignored_and_nulls_mean_default(app):
    result = chat(app, user="someone", metadata={"a": 1}, temperature=None, service_tier="auto")
    assert result.status_code == 200 and result.json["usage"]["completion_tokens"] == 3


def test_text_parts_and_string_messages(app):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert chat(app, messages=parts).json["usage"]["prompt_tokens"] == chat(app).json["usage"]["prompt_tokens"]
    assert chat(app, messages="Hi").json["usage"]["prompt_tokens"] == chat(app).json["usage"]["prompt_tokens"]


def test_logit_bias_forces_a_token(app, llm):
    token = llm.encode("x", add_special_tokens=False)[0]
    result = post(app, "/v1/completions", {"prompt": "a", "max_tokens": 3, "ignore_eos": True,
                                           "logit_bias": {str(token): 100}})
    assert result.json["choices"][0]["text"] == "xxx"


def test_thinking_goes_to_reasoning_content(app):
    whole = chat(app, enable_thinking=True, max_tokens=8, seed=1)
    message = whole.json["choices"][0]["message"]
    # The prompt opened <think> and the tiny model never closes it: all of the answer is reasoning.
    assert message["reasoning_content"] and message["content"] == ""
    streamed = sse_payloads(chat(app, enable_thinking=True, max_tokens=8, seed=1, stream=True))
    deltas = [p["choices"][0]["delta"] for p in streamed]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == message["reasoning_content"]
    assert not any(d.get("content") for d in deltas)


def test_chat_template_kwargs_reach_the_template(app):
    plain = chat(app).json["usage"]["prompt_tokens"]
    opened = chat(app, chat_template_kwargs={"enable_thinking": True}).json["usage"]["prompt_tokens"]
    assert opened != plain  # `<think>\n` instead of an empty think block
    assert "reasoning_content" in chat(app, chat_template_kwargs={"enable_thinking": True}).json["choices"][0][
        "message"]


def test_streamed_n_choices_each_end_with_a_finish_reason(app):
    payloads = sse_payloads(chat(app, n=2, stream=True, stream_options={"include_usage": True}))
    finished = [(p["choices"][0]["index"], p["choices"][0]["finish_reason"]) for p in payloads
                if p["choices"] and p["choices"][0]["finish_reason"]]
    assert finished == [(0, "length"), (1, "length")]
    assert payloads[-1]["usage"]["completion_tokens"] == 6


def test_completion_stream_with_echo_and_logprobs(app):
    result = post(app, "/v1/completions", {"prompt": "abc", "max_tokens": 3, "ignore_eos": True, "echo": True,
                                           "logprobs": 1, "stream": True})
    payloads = sse_payloads(result)
    assert payloads[0]["choices"][0]["text"] == "abc"
    tokens = [p["choices"][0]["logprobs"] for p in payloads if p["choices"][0]["logprobs"]]
    # The echo event scores the prompt (its first token has nothing before it); then one event per token.
    prompt = tokens[0]
    assert "".join(prompt["tokens"]) == "abc" and prompt["token_logprobs"][0] is None
    assert prompt["text_offset"][0] == 0 and prompt["top_logprobs"][0] is None
    assert len(tokens) == 4 and tokens[1]["text_offset"] == [3]


class FailingModel:
    """Stands in for the model: the first `works` forward passes run, then it raises like a lost device."""

    def __init__(self, model, works: int = 0):
        self.model, self.works = model, works

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        if self.works <= 0:
            raise RuntimeError("device lost")
        self.works -= 1
        return self.model(*args, **kwargs)


def test_internal_errors_are_500_and_the_app_keeps_serving(app, llm, monkeypatch, caplog):
    with monkeypatch.context() as patch:
        patch.setattr(llm, "model", FailingModel(llm.model))
        result = chat(app)
    assert result.status_code == 500
    assert result.json["error"]["type"] == "server_error" and "device lost" in result.json["error"]["message"]
    assert "Internal error" in caplog.text
    assert chat(app).status_code == 200


def test_a_failure_mid_stream_ends_the_stream_with_an_error_event(app, llm, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(llm, "model", FailingModel(llm.model, works=1))  # the prefill, then a decode step fails
        result = chat(app, stream=True)
    assert result.status_code == 200
    events = result.text.split("\n\n")
    assert events[-2] == "data: [DONE]" and "device lost" in events[-3]
    assert chat(app).status_code == 200
