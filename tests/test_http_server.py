"""`mistralrs serve` end to end: waitress on 127.0.0.1, driven by the official `openai` client and raw HTTP.

The tiny random model has a 512-token context and (almost) never emits EOS, so
answers run to max_tokens; `ignore_eos` makes long streams certain.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from conftest import selected_backends

from mistralrs.engine.api import load
from mistralrs.http.app import create_app
from mistralrs.http.server import create_server

MODEL = "tiny-qwen3"
CHAT = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module", params=selected_backends())
def server(request, tiny_model_dir):
    llm = load(tiny_model_dir("qwen3"), backend=request.param, cpu=True)
    srv = create_server(create_app(llm, MODEL), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    # Left running: closing waitress under its own polling thread fails that thread on a closed
    # descriptor (a thread-exception warning in pytest).
    return srv


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.effective_port}/v1", api_key="unused",
                         max_retries=0, timeout=60)


def raw_post(server, path: str, body: bytes, content_type: str = "application/json"):
    conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=60)
    conn.request("POST", path, body=body, headers={"Content-Type": content_type})
    resp = conn.getresponse()
    return resp.status, resp.read(), resp


def sse_request(server, body: dict) -> socket.socket:
    """Send a streaming request over a bare socket, so the test sees bytes as they arrive.

    HTTP/1.0: no chunked transfer encoding around the events, and the server closes at the end.
    """
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.effective_port), timeout=60)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nHost: test\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


# ---- the openai client ------------------------------------------------------------------------------


def test_chat_completion_shape_and_usage(client):
    answer = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6,
                                            extra_body={"ignore_eos": True})
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-") and answer.model == MODEL
    (choice,) = answer.choices
    assert choice.index == 0 and choice.message.role == "assistant" and choice.finish_reason == "length"
    assert isinstance(choice.message.content, str) and choice.logprobs is None
    assert answer.usage.completion_tokens == 6 and answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 6


def test_default_model_name_and_max_completion_tokens(client):
    answer = client.chat.completions.create(model="default", messages=CHAT, max_completion_tokens=3,
                                            extra_body={"ignore_eos": True})
    assert answer.usage.completion_tokens == 3


def test_stream_gives_the_same_text_as_a_blocking_call(client):
    kwargs = dict(model=MODEL, messages=CHAT, max_tokens=12, seed=3, temperature=0.9, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finished] == ["length"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert all(c.usage is None for c in chunks[:-1])


def test_same_seed_same_answer(client):
    def ask(seed):
        return client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=10, temperature=1.5,
                                              seed=seed, extra_body={"ignore_eos": True}).choices[0].message.content

    assert ask(11) == ask(11)
    assert len({ask(seed) for seed in (1, 2, 3)}) > 1  # the seed does change a sampled answer


def test_n_choices_are_distinct_seeded_runs(client):
    answer = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=1.5, seed=5, n=3,
                                            extra_body={"ignore_eos": True})
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert answer.usage.completion_tokens == 24
    single = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=1.5, seed=5,
                                            extra_body={"ignore_eos": True})
    assert answer.choices[0].message.content == single.choices[0].message.content


def test_stop_string_cuts_the_answer(client):
    kwargs = dict(model=MODEL, prompt="def main():", max_tokens=20, extra_body={"ignore_eos": True})
    full = client.completions.create(**kwargs).choices[0].text
    stop = full[4:6]
    assert stop.strip(), "the fixture's greedy answer should have text to stop at"
    cut = client.completions.create(**kwargs, stop=[stop, "never-there"]).choices[0]
    assert cut.finish_reason == "stop" and cut.text == full[: full.index(stop)]


def test_chat_logprobs(client):
    answer = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5, logprobs=True, top_logprobs=3,
                                            extra_body={"ignore_eos": True})
    content = answer.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True)


def test_completions_prompts_n_echo_and_logprobs(client):
    answer = client.completions.create(model=MODEL, prompt=["import os", "x = 1"], n=2, max_tokens=4, echo=True,
                                       logprobs=2, extra_body={"ignore_eos": True})
    assert answer.object == "text_completion" and [c.index for c in answer.choices] == [0, 1, 2, 3]
    assert answer.choices[0].text.startswith("import os") and answer.choices[2].text.startswith("x = 1")
    assert answer.usage.completion_tokens == 16
    # echo with logprobs scores the prompt too (OpenAI's legacy behaviour): its tokens come first.
    logprobs = answer.choices[0].logprobs
    prompt_tokens = len(logprobs.tokens) - 4
    assert "".join(logprobs.tokens[:prompt_tokens]) == "import os"
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(v <= 0 for v in logprobs.token_logprobs[1:])
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset[prompt_tokens] == len("import os")
    assert all(len(top) <= 2 for top in logprobs.top_logprobs[1:])


def test_completions_token_ids_and_streaming(client):
    whole = client.completions.create(model=MODEL, prompt=[5, 6, 7], max_tokens=6, extra_body={"ignore_eos": True})
    chunks = list(client.completions.create(model=MODEL, prompt=[5, 6, 7], max_tokens=6, stream=True,
                                            extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length" and whole.usage.prompt_tokens == 3


def test_models_list(client):
    (card,) = client.models.list().data
    assert card.id == MODEL and card.object == "model"


@pytest.mark.parametrize("kwargs, param, words", [
    (dict(temperature=5), "temperature", "between 0 and 2"),
    (dict(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role", "robot"),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     "messages[0].content[0].type", "image_url"),
    (dict(messages=[{"role": "user", "content": "word " * 700}]), "messages", "context"),
    (dict(max_tokens="ten"), "max_tokens", "integer"),
])
def test_bad_requests_are_400_with_an_openai_error_body(client, kwargs, param, words):
    request = {"model": MODEL, "messages": CHAT, **kwargs}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**request)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == param and words in error["message"]


def test_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert caught.value.body["code"] == "model_not_found" and "gpt-4o" in caught.value.body["message"]


# ---- raw HTTP ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, path, body, content_type, status", [
    ("POST", "/v1/chat/completions", b'{"messages": [', "application/json", 400),
    ("POST", "/v1/chat/completions", b"[1, 2]", "application/json", 400),
    ("POST", "/v1/chat/completions", b'{"messages": "hi"}', "text/plain", 415),
    ("POST", "/v1/completions", b"{}", "application/json", 400),
    ("GET", "/v1/nothing-here", None, None, 404),
    ("GET", "/v1/chat/completions", None, None, 405),
])
def test_raw_errors_have_the_openai_shape(server, method, path, body, content_type, status):
    conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=30)
    conn.request(method, path, body=body, headers={"Content-Type": content_type} if content_type else {})
    resp = conn.getresponse()
    error = json.loads(resp.read())["error"]
    assert resp.status == status and resp.getheader("Content-Type").startswith("application/json")
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


def test_health_and_openapi(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=30)
    conn.request("GET", "/health")
    health = conn.getresponse()
    assert health.status == 200 and json.loads(health.read()) == {"status": "ok"}
    conn.request("GET", "/openapi.json")  # the same keep-alive connection
    document = json.loads(conn.getresponse().read())
    assert document["openapi"].startswith("3.")
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health"} <= set(document["paths"])


def test_sse_framing_ends_with_done(server):
    status, body, resp = raw_post(server, "/v1/chat/completions", json.dumps(
        {"messages": CHAT, "max_tokens": 4, "stream": True, "ignore_eos": True}).encode())
    assert status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
    events = body.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"


def test_chunks_arrive_while_the_answer_is_generated(server):
    sock = sse_request(server, {"messages": CHAT, "max_tokens": 400, "stream": True, "ignore_eos": True})
    started = time.perf_counter()
    received = b""
    while b"data: {" not in received:
        received += sock.recv(65536)
    first_at = time.perf_counter() - started
    while data := sock.recv(65536):
        received += data
    done_at = time.perf_counter() - started
    sock.close()
    assert received.endswith(b"data: [DONE]\n\n")
    assert received.count(b"data: {") > 200  # about one event per token (none mid-character)
    # 400 decode steps take far longer than the first one: the first chunk did not wait for the last.
    assert done_at > 3 * first_at and done_at - first_at > 0.05


def test_a_client_that_disconnects_cancels_its_generation(server, client):
    # 64 choices of 400 tokens would keep the model busy for minutes if the stream were not cancelled.
    sock = sse_request(server, {"messages": CHAT, "max_tokens": 400, "n": 64, "stream": True, "ignore_eos": True})
    received = b""
    while b"data: {" not in received:
        received += sock.recv(65536)
    sock.close()
    started = time.perf_counter()
    answer = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2,
                                            extra_body={"ignore_eos": True})
    assert answer.usage.completion_tokens == 2
    assert time.perf_counter() - started < 10


def test_concurrent_requests_are_all_answered(client):
    # Generated side by side in one batch; the two requests with the same seed still agree.
    def ask(seed):
        return client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=20, seed=seed, temperature=1.0,
                                              extra_body={"ignore_eos": True})

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, [1, 2, 3, 1]))
    assert [a.usage.completion_tokens for a in answers] == [20] * 4
    assert answers[0].choices[0].message.content == answers[3].choices[0].message.content
