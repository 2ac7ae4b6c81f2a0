"""The server under load and abuse: many concurrent clients, clients that leave mid-stream, hostile bodies.

A real waitress server on 127.0.0.1 with the tiny random model. It (almost) never emits EOS;
`ignore_eos` makes every length certain, so a batched answer can be compared with a lone one.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from conftest import selected_backends

from mistralrs.engine import scheduler as scheduler_module
from mistralrs.engine.api import load
from mistralrs.http.app import create_app
from mistralrs.http.server import create_server, threads_for

MODEL = "tiny-qwen3"
CHAT = [{"role": "user", "content": "Say something."}]
PROMPTS = [f"Prompt {i}: " + "lorem ipsum " * i for i in range(16)]  # 16 different prompts and lengths
MAX_SEQS, MAX_WAITING = 32, 64


@pytest.fixture(scope="module", params=selected_backends())
def llm(request, tiny_model_dir):
    return load(tiny_model_dir("qwen3"), backend=request.param, cpu=True, prefill_chunk=32)


class Served:
    def __init__(self, srv, scheduler):
        self.srv, self.scheduler = srv, scheduler
        self.port = srv.effective_port


@pytest.fixture(scope="module")
def served(llm) -> Served:
    before = set(scheduler_module._LIVE)
    app = create_app(llm, MODEL, max_seqs=MAX_SEQS, max_waiting=MAX_WAITING)
    (scheduler,) = set(scheduler_module._LIVE) - before  # the app's own engine, to inspect its state
    srv = create_server(app, "127.0.0.1", 0, threads=threads_for(MAX_SEQS, MAX_WAITING))
    # Left running: closing waitress under its own polling thread fails that thread on a closed descriptor.
    threading.Thread(target=srv.run, daemon=True).start()
    return Served(srv, scheduler)


@pytest.fixture(scope="module")
def alone(served) -> dict[tuple[str, int], str]:
    """Each prompt's greedy answer asked alone (one request at a time), memoized per (prompt, max_tokens)."""
    client, answers = client_for(served), {}

    def answer(prompt: str, max_tokens: int) -> str:
        key = (prompt, max_tokens)
        if key not in answers:
            answers[key] = complete(client, prompt, max_tokens)
        return answers[key]

    answers["get"] = answer
    return answers


def client_for(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{served.port}/v1", api_key="unused", max_retries=0,
                         timeout=120)


def complete(client: openai.OpenAI, prompt: str, max_tokens: int) -> str:
    answer = client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == max_tokens
    return answer.choices[0].text


def metric(served: Served, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/metrics", timeout=30) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not in /metrics")


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def health(served: Served) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    conn.request("GET", "/health")
    resp = conn.getresponse()
    status, body = resp.status, json.loads(resp.read())
    conn.close()
    assert body == {"status": "ok"}
    return status


def open_stream(served: Served, body: dict) -> socket.socket:
    """A streaming completion over a bare socket (HTTP/1.0: no chunked framing, the server closes at the end)."""
    payload = json.dumps({"stream": True, "temperature": 0, "ignore_eos": True, **body}).encode()
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=120)
    sock.sendall(b"POST /v1/completions HTTP/1.0\r\nHost: test\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


# ---- many clients at once --------------------------------------------------------------------------------


def test_16_concurrent_greedy_requests_get_their_lone_answers(served, alone):
    lengths = [8 + (i * 5) % 17 for i in range(16)]  # different lengths too, so rows leave at different steps
    expected = [alone["get"](p, m) for p, m in zip(PROMPTS, lengths, strict=True)]
    assert len(set(expected)) > 1  # different prompts give different answers: the comparison below means something
    client = client_for(served)
    most_running, done = [0], threading.Event()

    def watch() -> None:  # how many sequences the engine holds at once, sampled while the requests run
        while not done.is_set():
            most_running[0] = max(most_running[0], served.scheduler.running)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            together = list(pool.map(lambda pm: complete(client, *pm), zip(PROMPTS, lengths, strict=True)))
    finally:
        done.set()
        watcher.join()
    assert together == expected
    assert most_running[0] > 1, "the requests were answered one at a time, not batched"


def test_48_streams_finish_exactly_while_16_clients_leave_mid_stream(served, alone):
    keep_tokens, leave_tokens = 12, 400
    wait_for(lambda: metric(served, "mistralrs_running_sequences") == 0, 60, "an idle engine")
    generated_before = metric(served, "mistralrs_generated_tokens_total")
    prompts = [PROMPTS[i % 8] for i in range(64)]
    leavers = set(range(3, 64, 4))  # 16 of the 64, spread through the arrival order
    expected = {i: alone["get"](prompts[i], keep_tokens) for i in range(64) if i not in leavers}
    results: dict[int, object] = {}

    def keeper(i: int) -> None:
        sock = open_stream(served, {"prompt": prompts[i], "max_tokens": keep_tokens})
        received = b""
        try:
            while data := sock.recv(65536):
                received += data
        finally:
            sock.close()
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.split(b" ", 2)[1] == b"200", head
        events = body.decode().split("\n\n")
        assert events[-2:] == ["data: [DONE]", ""], events[-3:]
        payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
        finishes = [p["choices"][0]["finish_reason"] for p in payloads if p["choices"][0]["finish_reason"]]
        results[i] = ("".join(p["choices"][0]["text"] for p in payloads), finishes)

    def leaver(i: int) -> None:
        sock = open_stream(served, {"prompt": prompts[i], "max_tokens": leave_tokens})
        received = b""
        try:
            while received.count(b"data: {") < 3:  # a few chunks, then hang up mid-stream
                data = sock.recv(65536)
                assert data, f"the stream ended after {received.count(b'data: {')} chunks"
                received += data
        finally:
            sock.close()
        assert b"[DONE]" not in received
        results[i] = "left"

    def run(i: int) -> None:
        try:
            (leaver if i in leavers else keeper)(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "some client never finished"
    errors = {i: r for i, r in results.items() if isinstance(r, BaseException)}
    assert not errors, errors
    assert {i for i, r in results.items() if r == "left"} == leavers
    for i, text in expected.items():
        assert results[i] == (text, ["length"]), f"client {i}"

    # Every sequence has left the engine: gauges at 0, and nothing left in the batch or its caches.
    wait_for(lambda: metric(served, "mistralrs_running_sequences") == 0
             and metric(served, "mistralrs_waiting_sequences") == 0, 60, "the gauges to return to 0")
    scheduler = served.scheduler
    wait_for(lambda: scheduler._batch.rows == 0, 30, "an empty batch")
    assert not scheduler._waiting and not scheduler._prefilling and not scheduler._running
    assert all(cache.keys is None and cache.values is None for cache in scheduler._batch.caches)
    # The leavers were cancelled, not generated to the end for nobody.
    generated = metric(served, "mistralrs_generated_tokens_total") - generated_before
    assert generated < 48 * keep_tokens + 16 * leave_tokens / 2
    assert health(served) == 200


# ---- hostile and malformed requests -----------------------------------------------------------------------

CHAT_PATH, COMPLETIONS_PATH = "/v1/chat/completions", "/v1/completions"


def chat_body(**fields) -> bytes:
    return json.dumps({"model": MODEL, "messages": CHAT, "max_tokens": 2, **fields}).encode()


def completion_body(**fields) -> bytes:
    return json.dumps({"model": MODEL, "prompt": "a", "max_tokens": 2, **fields}).encode()


JSON = "application/json"
TEN_MB = 10 * 1024 * 1024

HOSTILE = [
    # (id, method, path, body, content type, status)
    ("truncated-json", "POST", CHAT_PATH, b'{"messages": [', JSON, 400),
    ("empty-body", "POST", CHAT_PATH, b"", JSON, 400),
    ("json-null", "POST", CHAT_PATH, b"null", JSON, 400),
    ("json-array", "POST", CHAT_PATH, b"[1, 2]", JSON, 400),
    ("json-string", "POST", CHAT_PATH, b'"hello"', JSON, 400),
    ("json-number", "POST", COMPLETIONS_PATH, b"42", JSON, 400),
    ("nan", "POST", CHAT_PATH, chat_body()[:-1] + b', "temperature": NaN}', JSON, 400),
    ("infinity", "POST", CHAT_PATH, chat_body()[:-1] + b', "max_tokens": Infinity}', JSON, 400),
    ("non-utf8-body", "POST", CHAT_PATH, b"\x80\x81\xfe\xff", JSON, 400),
    ("non-utf8-in-string", "POST", CHAT_PATH,
     b'{"messages": [{"role": "user", "content": "\xff\xfe\xc3"}], "max_tokens": 2}', JSON, 400),
    ("lone-surrogate", "POST", CHAT_PATH,
     b'{"messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}', JSON, 400),
    ("10mb-unterminated", "POST", COMPLETIONS_PATH, b'{"prompt": "' + b"a" * TEN_MB, JSON, 400),
    # Valid JSON of 10 MB with one bad field (a 10 MB prompt itself takes ~20 s to tokenize on a busy CPU).
    ("10mb-valid-json", "POST", COMPLETIONS_PATH, completion_body(max_tokens=-1, user="x" * TEN_MB), JSON, 400),
    ("lone-surrogate-in-key", "POST", CHAT_PATH, chat_body()[:-1] + b', "\\udfff": 1}', JSON, 400),
    ("deep-nesting", "POST", CHAT_PATH, b"[" * 100_000 + b"]" * 100_000, JSON, 400),
    ("text-plain", "POST", CHAT_PATH, chat_body(), "text/plain", 415),
    ("no-content-type", "POST", CHAT_PATH, chat_body(), None, 415),
    ("unknown-route", "GET", "/v1/nothing-here", None, None, 404),
    ("get-on-post-route", "GET", CHAT_PATH, None, None, 405),
    ("delete-models", "DELETE", "/v1/models", None, None, 405),
    ("unknown-model", "POST", CHAT_PATH, chat_body(model="gpt-4o"), JSON, 404),
    ("model-number", "POST", CHAT_PATH, chat_body(model=123), JSON, 400),
    ("messages-missing", "POST", CHAT_PATH, json.dumps({"max_tokens": 2}).encode(), JSON, 400),
    ("messages-empty", "POST", CHAT_PATH, chat_body(messages=[]), JSON, 400),
    ("messages-object", "POST", CHAT_PATH, chat_body(messages={"role": "user"}), JSON, 400),
    ("message-string", "POST", CHAT_PATH, chat_body(messages=["hi"]), JSON, 400),
    ("unknown-role", "POST", CHAT_PATH, chat_body(messages=[{"role": "robot", "content": "hi"}]), JSON, 400),
    ("role-number", "POST", CHAT_PATH, chat_body(messages=[{"role": 1, "content": "hi"}]), JSON, 400),
    ("content-number", "POST", CHAT_PATH, chat_body(messages=[{"role": "user", "content": 5}]), JSON, 400),
    ("image-part", "POST", CHAT_PATH, chat_body(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]), JSON, 400),
    ("over-context", "POST", CHAT_PATH, chat_body(messages=[{"role": "user", "content": "word " * 700}]), JSON, 400),
    ("max-tokens-negative", "POST", CHAT_PATH, chat_body(max_tokens=-5), JSON, 400),
    ("max-tokens-zero", "POST", CHAT_PATH, chat_body(max_tokens=0), JSON, 400),
    ("max-tokens-string", "POST", CHAT_PATH, chat_body(max_tokens="ten"), JSON, 400),
    ("max-tokens-bool", "POST", CHAT_PATH, chat_body(max_tokens=True), JSON, 400),
    ("max-tokens-overflow-float", "POST", CHAT_PATH, chat_body()[:-1] + b', "max_tokens": 1e400}', JSON, 400),
    ("temperature-50", "POST", CHAT_PATH, chat_body(temperature=50), JSON, 400),
    ("temperature-negative", "POST", CHAT_PATH, chat_body(temperature=-1), JSON, 400),
    ("temperature-string", "POST", CHAT_PATH, chat_body(temperature="hot"), JSON, 400),
    ("top-p-2", "POST", CHAT_PATH, chat_body(top_p=2), JSON, 400),
    ("n-huge", "POST", CHAT_PATH, chat_body(n=1_000_000), JSON, 400),
    ("n-negative", "POST", CHAT_PATH, chat_body(n=-1), JSON, 400),
    ("n-string", "POST", CHAT_PATH, chat_body(n="two"), JSON, 400),
    ("stop-number", "POST", CHAT_PATH, chat_body(stop=5), JSON, 400),
    ("logit-bias-key", "POST", CHAT_PATH, chat_body(logit_bias={"abc": 1}), JSON, 400),
    ("seed-string", "POST", CHAT_PATH, chat_body(seed="x"), JSON, 400),
    ("stream-string", "POST", CHAT_PATH, chat_body(stream="yes"), JSON, 400),
    ("top-logprobs-50", "POST", CHAT_PATH, chat_body(logprobs=True, top_logprobs=50), JSON, 400),
    ("json-object-format", "POST", CHAT_PATH, chat_body(response_format={"type": "json_object"}), JSON, 400),
    ("tool-without-parameters", "POST", CHAT_PATH,
     chat_body(tools=[{"type": "function", "function": {"name": "f"}}]), JSON, 400),
    ("prompt-missing", "POST", COMPLETIONS_PATH, b"{}", JSON, 400),
    ("prompt-bad-token", "POST", COMPLETIONS_PATH, completion_body(prompt=[99999]), JSON, 400),
    ("prompt-mixed-list", "POST", COMPLETIONS_PATH, completion_body(prompt=[1, "a"]), JSON, 400),
    ("completion-logprobs-50", "POST", COMPLETIONS_PATH, completion_body(logprobs=50), JSON, 400),
    ("completion-n-huge", "POST", COMPLETIONS_PATH, completion_body(n=10**6, stream=True), JSON, 400),
]


def test_the_hostile_table_is_long_enough():
    assert len(HOSTILE) >= 40 and len({case[0] for case in HOSTILE}) == len(HOSTILE)


@pytest.mark.parametrize("method, path, body, content_type, status",
                         [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_requests_get_a_4xx_openai_error_and_the_server_lives_on(served, method, path, body,
                                                                       content_type, status):
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=120)
    conn.request(method, path, body=body, headers={"Content-Type": content_type} if content_type else {})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    assert resp.status == status, raw[:500]
    assert resp.getheader("Content-Type").startswith("application/json")
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
    assert health(served) == 200


def test_the_server_still_answers_after_the_hostile_table(served, alone):
    assert health(served) == 200
    assert metric(served, "mistralrs_running_sequences") == 0
    assert complete(client_for(served), PROMPTS[1], 4) == alone["get"](PROMPTS[1], 4)


def test_an_escaped_surrogate_pair_is_text_not_an_error(served):
    # The lone-surrogate rows above must not catch a proper pair (an emoji written as two escapes).
    body = b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}], "max_tokens": 2, "ignore_eos": true}'
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=120)
    conn.request("POST", CHAT_PATH, body=body, headers={"Content-Type": JSON})
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    assert resp.status == 200 and answer["usage"]["completion_tokens"] == 2
