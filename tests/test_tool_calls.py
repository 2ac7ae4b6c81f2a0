"""Tool-call parsing of model output: the Hermes/Qwen and Llama 3 formats, whole and streamed."""

from __future__ import annotations

import json
import random

import pytest

from mistralrs.engine.tool_calls import ToolCallStream, parse_tool_calls


def hermes(name: str, arguments) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


def calls_of(calls) -> list[tuple[str, dict]]:
    return [(call.name, json.loads(call.arguments)) for call in calls]


def streamed(text: str, chunks: list[int], names=None) -> tuple[str, list[tuple[str, dict]]]:
    """Feed `text` cut at the given positions; return the content and calls the pieces add up to."""
    stream = ToolCallStream(names)
    pieces, start = [], 0
    for end in [*chunks, len(text)]:
        pieces += stream.feed(text[start:end])
        start = end
    pieces += stream.finish()
    content = "".join(value for kind, value in pieces if kind == "content")
    calls = [value for kind, value in pieces if kind == "tool_call"]
    assert calls == stream.calls
    return content, calls_of(calls)


def test_one_hermes_call():
    content, calls = parse_tool_calls(hermes("get_weather", {"city": "Paris", "unit": "celsius"}))
    assert content == ""
    assert calls_of(calls) == [("get_weather", {"city": "Paris", "unit": "celsius"})]
    call = calls[0].openai()
    assert call["type"] == "function" and call["id"].startswith("call_") and len(call["id"]) > 10
    assert call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"], str)


def test_several_calls_with_text_around_them():
    text = ("Let me look that up.\n\n" + hermes("get_weather", {"city": "Paris"}) + "\n"
            + hermes("get_time", {"zone": "CET"}) + "\n\nDone, é.")
    content, calls = parse_tool_calls(text)
    assert content == "Let me look that up.\n\nDone, é."
    assert calls_of(calls) == [("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET"})]
    assert calls[0].id != calls[1].id


def test_text_without_calls_is_unchanged():
    for text in ("", "  Hello\n\n", "a < b and <tool_ is not a tag", "{not json", "<|python_tag", "[1, 2]"):
        assert parse_tool_calls(text) == (text, [])


@pytest.mark.parametrize("block", [
    "<tool_call>\n{bad json}\n</tool_call>",
    '<tool_call>\n{"arguments": {}}\n</tool_call>',  # no name
    '<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>',  # arguments not an object
    '<tool_call>\n["f"]\n</tool_call>',
    '<tool_call>\n{"name": "f", "arguments": {}}',  # never closed (cut off by max_tokens)
])
def test_invalid_blocks_stay_content(block):
    text = "Before. " + block
    assert parse_tool_calls(text) == (text, [])


def test_text_only_after_a_call_loses_its_leading_whitespace():
    content, calls = parse_tool_calls(hermes("f", {}) + "\n\nDone.\n")
    assert content == "Done.\n" and calls_of(calls) == [("f", {})]


def test_invalid_block_next_to_a_valid_call():
    text = "<tool_call>{oops}</tool_call>\n" + hermes("f", {"x": 1})
    content, calls = parse_tool_calls(text)
    assert content == "<tool_call>{oops}</tool_call>" and calls_of(calls) == [("f", {"x": 1})]


def test_arguments_variants():
    text = ('<tool_call>{"name": "a", "parameters": {"k": 1}}</tool_call>'
            '<tool_call>{"name": "b", "arguments": "{\\"k\\": 2}"}</tool_call>'
            '<tool_call>{"name": "c"}</tool_call>')
    content, calls = parse_tool_calls(text)
    assert content == "" and calls_of(calls) == [("a", {"k": 1}), ("b", {"k": 2}), ("c", {})]


def test_names_limit_which_calls_count():
    text = hermes("get_weather", {"city": "Paris"}) + hermes("rm_rf", {})
    content, calls = parse_tool_calls(text, names={"get_weather"})
    assert calls_of(calls) == [("get_weather", {"city": "Paris"})]
    assert content == hermes("rm_rf", {})


@pytest.mark.parametrize("text", [
    '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
    ' \n{"name": "get_weather", "arguments": {"city": "Paris"}}\n',
])
def test_llama3_json_call(text):
    content, calls = parse_tool_calls(text, names={"get_weather"})
    assert content == "" and calls_of(calls) == [("get_weather", {"city": "Paris"})]


def test_llama3_several_calls():
    for text in ('{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}',
                 '<|python_tag|>[{"name": "a", "parameters": {"x": 1}}, {"name": "b", "arguments": {}}]'):
        content, calls = parse_tool_calls(text)
        assert content == "" and calls_of(calls) == [("a", {"x": 1}), ("b", {})]


@pytest.mark.parametrize("text", [
    '{"name": "Bob", "parameters": {"age": 3}}',  # a JSON answer, not a call to a known tool
    '{"name": "get_weather", "parameters": {"city": "Paris"}} and then some prose',
    '{"answer": 42}',
])
def test_json_that_is_not_a_call_stays_content(text):
    assert parse_tool_calls(text, names={"get_weather"}) == (text, [])


def test_json_start_that_holds_a_hermes_call():
    text = '{"note": 1}\n' + hermes("f", {})
    content, calls = parse_tool_calls(text)
    assert content == '{"note": 1}' and calls_of(calls) == [("f", {})]


STREAM_CASES = [
    "Let me look that up.\n\n" + hermes("get_weather", {"city": "Paris"}) + "\n" + hermes("t", {"z": "é"}) + " ok",
    "plain answer with < and <tool and trailing space  ",
    "x <tool_call>{bad}</tool_call> y " + hermes("f", {"a": [1, 2]}),
    '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}',
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    '{"not": "a call"} <tool_call>',
    "Before " + hermes("f", {}) + "\n\n",
    hermes("f", {}) + "\n \n" + hermes("g", {}) + "\n\nAfter <tool_call> all\n",
]


@pytest.mark.parametrize("text", STREAM_CASES)
def test_stream_matches_whole_text_for_any_split(text):
    content, calls = parse_tool_calls(text)
    expected = (content, calls_of(calls))
    assert streamed(text, []) == expected
    assert streamed(text, list(range(1, len(text)))) == expected  # one character at a time
    rng = random.Random(text)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 8))))
        assert streamed(text, cuts) == expected


def test_content_streams_before_the_call_and_is_held_inside_it():
    stream = ToolCallStream()
    assert stream.feed("Checking the weather") == [("content", "Checking the weather")]
    assert stream.feed(" now.\n<tool_") == [("content", " now.")]  # whitespace and a partial tag held
    assert stream.feed('call>\n{"name": "f", ') == []
    pieces = stream.feed('"arguments": {"a": 1}}\n</tool_call>')
    assert [kind for kind, _ in pieces] == ["tool_call"] and pieces[0][1].arguments == '{"a": 1}'
    assert stream.feed("\n") == [] and stream.finish() == []


def test_held_partial_tag_is_released_when_it_is_not_a_tag():
    stream = ToolCallStream()
    assert stream.feed("a <tool") == [("content", "a")]
    assert stream.feed("box>") == [("content", " <toolbox>")]
