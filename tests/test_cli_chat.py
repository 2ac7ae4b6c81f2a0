r"""The pieces of `mistralrs run` that need no model: \commands, the thinking display, the request log."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest

from mistralrs.cli.chat_commands import (
    CommandError,
    parse_temperature,
    parse_top_k,
    parse_top_p,
    split_command,
)
from mistralrs.cli.chat_output import DIM, RESET, AnswerView, ChatOutput
from mistralrs.cli.chat_repl import ChatSession, speed_line
from mistralrs.cli.request_log import RequestLog
from mistralrs.engine.params import Completion, SamplingParams, Timing, Usage
from mistralrs.errors import UserError


def test_split_command():
    assert split_command(r"\temperature 0.7") == ("temperature", "0.7")
    assert split_command(r"\system  Be a pirate. ") == ("system", "Be a pirate.")
    assert split_command(r"\exit") == ("exit", "")
    assert split_command("hello") is None
    assert split_command(r"\n is a newline") is None  # not a command: goes to the model


@pytest.mark.parametrize("parse, good, bad", [
    (parse_temperature, {"0": 0.0, "0.7": 0.7, "2": 2.0}, ["2.01", "-0.1", "abc", "", "nan", "inf"]),
    (parse_top_k, {"1": 1, "50": 50}, ["0", "-3", "1.5", "x", ""]),
    (parse_top_p, {"0.9": 0.9, "1": 1.0}, ["0", "1.1", "-1", "y", ""]),
])
def test_values_are_checked(parse, good, bad):
    for text, value in good.items():
        assert parse(text) == value
    for text in bad:
        with pytest.raises(CommandError):
            parse(text)


class FakeLLM:
    """Stands in for an LLM whose every answer the template refuses."""

    model_id = "fake"
    template = None

    def stream_chat(self, messages, params, **kwargs):
        raise UserError("the template refuses this conversation")


def session(enable_thinking=False):
    out, err = io.StringIO(), io.StringIO()
    chat = ChatSession(FakeLLM(), ChatOutput(True, out, err, color=False), enable_thinking=enable_thinking, seed=5)
    return chat, out, err


def test_commands_change_the_session():
    chat, out, err = session()
    assert chat.handle(r"\system Always answer as a pirate.")
    assert chat.messages == [{"role": "system", "content": "Always answer as a pirate."}]
    chat.handle(r"\temperature 0.7")
    chat.handle(r"\topk 50")
    chat.handle(r"\topp 0.9")
    assert (chat.sampling.temperature, chat.sampling.top_k, chat.sampling.top_p, chat.sampling.seed) == (0.7, 50, 0.9, 5)
    chat.handle(r"\clear")
    assert chat.messages == []
    chat.handle(r"\help")
    assert r"\topp" in out.getvalue() and err.getvalue() == ""
    assert chat.handle(r"\exit") is False


def test_bad_values_keep_the_chat_going():
    chat, out, err = session()
    for line in (r"\temperature 9", r"\topk 0", r"\topp 1.5", r"\topk many", r"\system"):
        assert chat.handle(line) is True
    assert err.getvalue().count("error: ") == 5
    assert chat.sampling == SamplingParams(seed=5)


def test_a_refused_answer_is_reported_and_forgotten():
    chat, out, err = session()
    assert chat.handle("hello") is True
    assert "the template refuses" in err.getvalue()
    assert chat.messages == []  # the question that failed is not kept


def test_thinking_templates_are_told_whether_to_think():
    thinking = SimpleNamespace(thinks=True)
    assert ChatSession(SimpleNamespace(template=thinking), None).template_kwargs == {"enable_thinking": False}
    assert ChatSession(SimpleNamespace(template=thinking), None, enable_thinking=True).template_kwargs == {
        "enable_thinking": True}
    plain = SimpleNamespace(thinks=False)
    assert ChatSession(SimpleNamespace(template=plain), None).template_kwargs == {}


def render(pieces, starts_in_reasoning=False, color=True):
    out = io.StringIO()
    view = AnswerView(ChatOutput(True, out, io.StringIO(), color=color), starts_in_reasoning)
    for piece in pieces:
        view.feed(piece)
    return view.finish(), out.getvalue()


def visible(text: str) -> str:
    return text.replace(DIM, "").replace(RESET, "")


def test_thinking_is_shown_dim_before_the_answer():
    (reasoning, content), shown = render(["<thi", "nk>Let me ", "think.</th", "ink>\n\nThe answer", " is 4."])
    assert (reasoning, content) == ("Let me think.", "The answer is 4.")
    dim_part, _, answer_part = shown.rpartition(RESET)
    assert dim_part.startswith(DIM) and visible(dim_part) == "Let me think."
    assert answer_part == "\n\nThe answer is 4."


def test_thinking_opened_by_the_prompt():
    # The template wrote <think> into the prompt: the output holds only the closing tag.
    (reasoning, content), shown = render(["Hmm, 2+2.", "</think>", "4"], starts_in_reasoning=True)
    assert (reasoning, content) == ("Hmm, 2+2.", "4")
    assert shown.startswith(DIM + "Hmm, 2+2.") and shown.endswith("4") and not shown.endswith(RESET)


def test_plain_answers_are_not_dimmed():
    (reasoning, content), shown = render(["Hello", " there"])
    assert reasoning is None and content == shown == "Hello there"


def test_speed_line():
    completion = Completion("x" * 12, list(range(12)), "stop", Usage(5, 12), Timing(0.085, 11 / 45.3))
    assert speed_line(completion) == "[12 tokens, 45.3 tok/s, TTFT 85 ms]"
    completion.finish_reason = "cancelled"
    assert speed_line(completion).endswith(", stopped]")


def test_request_log_appends_json_lines(tmp_path):
    path = tmp_path / "requests.jsonl"
    for _ in range(2):
        log = RequestLog(path)
        log.request(messages=[{"role": "user", "content": "hi"}], sampling=SamplingParams(temperature=0.5))
        log.response(text="hello", usage=Usage(3, 1))
        log.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["type"] for r in records] == ["request", "response"] * 2
    assert records[0]["sampling"]["temperature"] == 0.5 and records[1]["usage"]["completion_tokens"] == 1
    RequestLog(None).request(anything=1)  # no --log: nothing happens
