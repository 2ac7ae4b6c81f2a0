"""Continuous batching: batched answers equal lone ones, requests overlap, the queue is bounded, and
clients that leave are cancelled.

The tiny random model (almost) never emits EOS; `ignore_eos` makes lengths certain.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

import openai
import pytest
from conftest import selected_backends

from mistralrs.engine import api, heap
from mistralrs.engine.api import load
from mistralrs.engine.params import SamplingParams
from mistralrs.engine.scheduler import QueueFull, Scheduler
from mistralrs.errors import UserError
from mistralrs.http.app import create_app
from mistralrs.http.server import create_server

MODEL = "tiny-qwen3"
CHAT = [{"role": "user", "content": "Say something."}]
PREFILL_CHUNK = 16  # small, so the longer prompts below are prefilled in several chunks between decode steps


@pytest.fixture(scope="module", params=selected_backends())
def llm(request, tiny_model_dir):
    return load(tiny_model_dir("qwen3"), backend=request.param, cpu=True, prefill_chunk=PREFILL_CHUNK)


@pytest.fixture(scope="module")
def scheduler(llm):
    scheduler = Scheduler(llm, max_seqs=8)
    yield scheduler
    scheduler.close()


def start_server(llm, **app_options):
    """A server on a free port, left running: closing waitress under its own polling thread
    makes that thread fail on a closed descriptor (a thread-exception warning in pytest)."""
    srv = create_server(create_app(llm, MODEL, **app_options), "127.0.0.1", 0, threads=16)
    threading.Thread(target=srv.run, daemon=True).start()
    return srv


@pytest.fixture(scope="module")
def server(llm):
    return start_server(llm, max_seqs=8)


def client_for(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{srv.effective_port}/v1", api_key="unused", max_retries=0,
                         timeout=60)


def send(srv, path: str, body: dict) -> socket.socket:
    """A request over a bare socket (HTTP/1.0: the server closes when done), left for the test to read or drop."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", srv.effective_port), timeout=60)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n".encode()
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        data = sock.recv(65536)
        assert data, f"the connection closed before {marker!r}: {received[-300:]!r}"
        received += data
    return received


def metric(srv, name: str) -> float:
    """One unlabelled-by-us series from /metrics (the first sample whose name matches)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.effective_port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not in /metrics")


def wait_for(condition, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# ---- the engine -------------------------------------------------------------------------------------

PROMPTS = [list(range(5, 5 + n)) for n in (3, 40, 17, 70)]  # 40 and 70 tokens take several prefill chunks
MAX_TOKENS = [30, 12, 25, 40]


def test_greedy_answers_in_a_batch_equal_answers_alone(llm, scheduler):
    def params(m):
        return SamplingParams(max_tokens=m, temperature=0, ignore_eos=True)

    alone = [llm.generate(p, params(m)).token_ids for p, m in zip(PROMPTS, MAX_TOKENS, strict=True)]
    # Submitted one after another, so each joins a batch that is already decoding at other positions.
    requests = [scheduler.submit([(p, params(m))]) for p, m in zip(PROMPTS, MAX_TOKENS, strict=True)]
    batched = [request.collect()[0].token_ids for request in requests]
    assert batched == alone


def test_freed_memory_goes_back_to_the_os_when_generation_ends(llm, monkeypatch):
    # glibc keeps a finished sequence's KV cache and activations resident unless trimmed.
    trims = []
    monkeypatch.setattr(heap, "trim", lambda: trims.append(threading.current_thread().name))
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    llm.generate([5, 6, 7], params)
    assert trims == []  # a direct generation whose cache is too small to be worth it
    monkeypatch.setattr(api, "TRIM_AFTER_KV_BYTES", 9 * llm.kv_bytes_per_token)  # 3 + 6 positions
    llm.generate([5, 6, 7], params)
    assert len(trims) == 1  # as it finishes
    scheduler = Scheduler(llm, max_seqs=4)
    try:
        requests = [scheduler.submit([(p, params)]) for p in ([5, 6, 7], [8, 9])]
        for request in requests:
            request.collect()
        wait_for(lambda: len(trims) == 2)  # the engine thread, once, when it went idle
        time.sleep(0.2)
        assert len(trims) == 2 and trims[1] != threading.current_thread().name
    finally:
        scheduler.close()


@pytest.mark.parametrize("arch", ["mistral", "gemma3", "phi3"])
def test_every_attention_variant_batches_exactly(arch, backend, tiny_model_dir):
    # Sliding windows of 16 (Mistral, Gemma 3's local layers), and Phi-3's longrope, whose factors
    # change past 64 positions: rows on either side of that line share the batch.
    llm = load(tiny_model_dir(arch), backend=backend, cpu=True, prefill_chunk=PREFILL_CHUNK)
    params = [SamplingParams(max_tokens=m, temperature=0, ignore_eos=True) for m in MAX_TOKENS]
    alone = [llm.generate(p, sp).token_ids for p, sp in zip(PROMPTS, params, strict=True)]
    scheduler = Scheduler(llm, max_seqs=4)
    try:
        requests = [scheduler.submit([(p, sp)]) for p, sp in zip(PROMPTS, params, strict=True)]
        assert [request.collect()[0].token_ids for request in requests] == alone
    finally:
        scheduler.close()


def test_the_batch_drops_columns_when_its_longest_sequence_leaves(llm, scheduler):
    # The short sequence joins right-aligned behind 300 columns of the long one's; when the long
    # one finishes, those columns are cut away while the short one keeps decoding.
    long_prompt, short_prompt = [5 + i % 400 for i in range(300)], [9, 10, 11]
    long_params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    short_params = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)
    alone = llm.generate(short_prompt, short_params).token_ids
    both = scheduler.submit([(long_prompt, long_params), (short_prompt, short_params)]).collect()
    assert both[1].token_ids == alone and len(both[0].token_ids) == 5


def test_seeded_sampling_does_not_depend_on_the_batch(llm, scheduler):
    def params(seed):
        return SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=seed, repetition_penalty=1.1,
                              presence_penalty=0.5, logit_bias={7: 3.0}, ignore_eos=True)

    alone = [llm.generate(p, params(seed)).token_ids for seed, p in enumerate(PROMPTS)]
    mixed = scheduler.submit([(p, params(seed)) for seed, p in enumerate(PROMPTS)]
                             + [(PROMPTS[0], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))])
    assert [c.token_ids for c in mixed.collect()[: len(PROMPTS)]] == alone


def test_logprobs_in_a_batch_equal_logprobs_alone(llm, scheduler):
    params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True, logprobs=True, top_logprobs=2)
    alone = llm.generate(PROMPTS[1], params).logprobs
    batched = scheduler.submit([(PROMPTS[1], params), (PROMPTS[3], params)]).collect()[0].logprobs
    assert [lp.token_id for lp in batched] == [lp.token_id for lp in alone]
    assert [lp.logprob for lp in batched] == pytest.approx([lp.logprob for lp in alone], abs=1e-4)


def test_prompt_logprobs_agree_on_both_paths(llm, scheduler):
    # 70 prompt tokens: scored over several prefill chunks, whose boundaries must not show.
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True, logprobs=True, top_logprobs=2,
                            prompt_logprobs=True)
    direct = llm.generate(PROMPTS[3], params).prompt_logprobs
    batched = scheduler.submit([(PROMPTS[3], params), (PROMPTS[0], params)]).collect()[0].prompt_logprobs
    assert [lp.token_id for lp in direct] == [lp.token_id for lp in batched] == PROMPTS[3]
    assert direct[0].logprob is None and batched[0].logprob is None
    assert [lp.logprob for lp in batched[1:]] == pytest.approx([lp.logprob for lp in direct[1:]], abs=1e-4)
    assert all(len(lp.top) == 2 and lp.top[0][2] >= lp.logprob - 1e-6 for lp in direct[1:])


def test_scheduler_limits_are_checked(llm):
    with pytest.raises(UserError, match="--max-seqs must be at least 1"):
        Scheduler(llm, max_seqs=0)
    with pytest.raises(UserError, match="waiting queue"):
        Scheduler(llm, max_waiting=0)


def test_a_full_queue_refuses_new_sequences(llm):
    scheduler = Scheduler(llm, max_seqs=1, max_waiting=2)
    try:
        long = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)
        running = scheduler.submit([([5, 6, 7], long)])
        wait_for(lambda: scheduler.running == 1 and scheduler.waiting == 0)
        waiting = scheduler.submit([([5, 6], long), ([8], long)])
        with pytest.raises(QueueFull) as caught:
            scheduler.submit([([9], long)])
        assert caught.value.retry_after_s >= 1 and "2" in str(caught.value)
        waiting.cancel()  # cancelled while queued: it leaves without ever being prefilled
        wait_for(lambda: scheduler.waiting == 0)
        assert all(seq.out is None for seq in waiting.sequences)
        running.cancel()
        wait_for(lambda: scheduler.running == 0)
    finally:
        scheduler.close()


# ---- over HTTP ----------------------------------------------------------------------------------------


def test_concurrent_http_requests_get_their_lone_answers(server):
    client = client_for(server)

    def ask(prompt, max_tokens, out, i):
        out[i] = client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                           extra_body={"ignore_eos": True}).choices[0].text

    prompts = ["def f(x):", "import os\nimport sys\n" * 5, "x = 1", "class A:\n    pass\n" * 8]
    lengths = [12, 20, 8, 16]
    alone = [None] * 4
    for i in range(4):
        ask(prompts[i], lengths[i], alone, i)
    together = [None] * 4
    threads = [threading.Thread(target=ask, args=(prompts[i], lengths[i], together, i)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone


def test_a_short_request_finishes_while_a_long_stream_runs(server):
    sock = send(server, "/v1/chat/completions",
                {"messages": CHAT, "max_tokens": 400, "stream": True, "ignore_eos": True})
    try:
        read_until(sock, b"data: {")
        answer = client_for(server).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3,
                                                            extra_body={"ignore_eos": True})
        assert answer.usage.completion_tokens == 3
        sock.setblocking(False)
        try:
            rest = sock.recv(1 << 20)
        except BlockingIOError:
            rest = b""
        assert b"[DONE]" not in rest, "the long stream should still be running: requests were not batched"
    finally:
        sock.close()


def test_n_choices_stream_side_by_side(server):
    chunks = list(client_for(server).chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=5, n=3, temperature=1.0, seed=4, stream=True,
        extra_body={"ignore_eos": True}))
    finishes = {c.choices[0].index: c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason}
    assert finishes == {0: "length", 1: "length", 2: "length"}
    roles = [c.choices[0].index for c in chunks if c.choices[0].delta.role == "assistant"]
    assert sorted(roles) == [0, 1, 2]


def test_a_full_queue_is_503_with_retry_after(llm):
    srv = start_server(llm, max_seqs=1, max_waiting=1)
    scheduler_busy = []
    try:
        body = {"messages": CHAT, "max_tokens": 400, "stream": True, "ignore_eos": True}
        scheduler_busy.append(send(srv, "/v1/chat/completions", body))
        read_until(scheduler_busy[0], b"data: {")  # running
        scheduler_busy.append(send(srv, "/v1/chat/completions", body))  # waiting
        time.sleep(0.3)
        with pytest.raises(openai.APIStatusError) as caught:
            client_for(srv).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
        error = caught.value
        assert error.status_code == 503 and error.response.headers["Retry-After"].isdigit()
        assert error.body["type"] == "server_error" and error.body["code"] == "server_busy"
        assert "busy" in error.body["message"]
        # A streaming client that leaves while it waits gives its place up before it ever ran.
        assert metric(srv, "mistralrs_waiting_sequences") == 1
        # (The running stream may end meanwhile and let it in; either way it leaves the queue.)
        scheduler_busy.pop().close()
        wait_for(lambda: metric(srv, "mistralrs_waiting_sequences") == 0, timeout_s=10)
    finally:
        for sock in scheduler_busy:
            sock.close()


def test_a_non_streaming_client_that_hangs_up_is_cancelled(server):
    # waitress reads ahead on the connection, so it sees the hang-up while the answer is being generated.
    wait_for(lambda: metric(server, "mistralrs_running_sequences") == 0)
    before = metric(server, "mistralrs_generated_tokens_total")
    sock = send(server, "/v1/completions", {"prompt": "abc", "max_tokens": 500, "n": 4, "ignore_eos": True})
    wait_for(lambda: metric(server, "mistralrs_generated_tokens_total") > before)
    sock.close()
    wait_for(lambda: metric(server, "mistralrs_running_sequences") == 0, timeout_s=10)
    assert metric(server, "mistralrs_generated_tokens_total") - before < 4 * 500
