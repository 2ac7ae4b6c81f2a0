"""Tool calling on POST /v1/chat/completions: request checks, rendering, and the answer's shape.

The tiny random model never writes a tool call by itself, so the route runs end to
end for what goes in (tools rendered into the prompt, tool messages, tool_choice),
and the builders the route uses (answer_message, ChoiceDeltas) are fed answer text
directly for what comes out.
"""

from __future__ import annotations

import json
import shutil
import threading

import falcon.testing
import openai
import pytest
from conftest import selected_backends
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from mistralrs.engine.api import load
from mistralrs.http.app import create_app
from mistralrs.http.chat import ChoiceDeltas, Thinking, answer_message
from mistralrs.http.messages import parse_messages
from mistralrs.http.server import create_server

MODEL = "tiny-tools"
CHAT = [{"role": "user", "content": "What is the weather in Paris?"}]
# A Hermes-style template: tools in a system turn, calls as <tool_call> blocks, tool results as turns.
HERMES = (
    "{% if tools %}<|im_start|>system\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}"
    "\n</tools><|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "{% for call in message.tool_calls or [] %}<tool_call>\n"
    "{\"name\": \"{{ call.function.name }}\", \"arguments\": {{ call.function.arguments | tojson }}}"
    "\n</tool_call>{% endfor %}"
    "{% if message.tool_call_id %} (for {{ message.tool_call_id }}){% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
HISTORY = [
    *CHAT,
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 22}'},
]


@pytest.fixture(scope="module", params=selected_backends())
def llm(request, tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tools") / "model"
    shutil.copytree(tiny_model_dir("qwen3"), folder)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["chat_template"] = HERMES
    path.write_text(json.dumps(config))
    return load(str(folder), backend=request.param, cpu=True)


@pytest.fixture(scope="module")
def app(llm) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_app(llm, MODEL))


def chat(app, **fields):
    body = {"messages": CHAT, "max_tokens": 4, "ignore_eos": True, "seed": 7, **fields}
    return app.simulate_post("/v1/chat/completions", json=body)


def prompt_tokens(app, **fields) -> int:
    result = chat(app, **fields)
    assert result.status_code == 200, result.text
    return result.json["usage"]["prompt_tokens"]


# ---- requests through the route ---------------------------------------------------------------------


def test_tools_are_rendered_into_the_prompt(app, llm):
    plain = prompt_tokens(app)
    one = prompt_tokens(app, tools=[WEATHER])
    both = prompt_tokens(app, tools=[WEATHER, TIME])
    assert plain < one < both
    assert prompt_tokens(app, tools=[]) == plain
    assert prompt_tokens(app, tools=[WEATHER, TIME], tool_choice="none") == plain  # "none": no tools shown
    assert prompt_tokens(app, tools=[WEATHER, TIME], tool_choice="auto") == both
    assert prompt_tokens(app, tools=[WEATHER, TIME], tool_choice="required") == both
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert prompt_tokens(app, tools=[WEATHER, TIME], tool_choice=named) == one  # only the named tool
    rendered = llm.render_chat(parse_messages(CHAT), tools=[WEATHER])
    assert json.dumps(WEATHER, ensure_ascii=False) in rendered


def test_answer_without_calls_is_plain_content(app, llm):
    result = chat(app, tools=[WEATHER])
    assert result.status_code == 200, result.text
    ChatCompletion.model_validate(result.json)
    (choice,) = result.json["choices"]
    assert choice["finish_reason"] == "length" and "tool_calls" not in choice["message"]
    assert isinstance(choice["message"]["content"], str)
    streamed = chat(app, tools=[WEATHER], stream=True)
    assert streamed.status_code == 200
    events = streamed.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [ChatCompletionChunk.model_validate_json(event.removeprefix("data: ")) for event in events[:-2]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice["message"]["content"]
    assert chunks[-1].choices[0].finish_reason == "length"


def test_tool_messages_and_assistant_calls_are_accepted(app, llm):
    result = chat(app, messages=HISTORY, tools=[WEATHER])
    assert result.status_code == 200, result.text
    rendered = llm.render_chat(parse_messages(HISTORY), tools=[WEATHER])
    # The JSON-string arguments reach the template as a mapping (its `tojson` writes an object, not a string).
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in rendered
    assert '<|im_start|>tool\n{"temperature": 22} (for call_1)<|im_end|>' in rendered


def test_arguments_that_are_not_a_json_object_pass_through():
    (message,) = parse_messages([{"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "not json"}}]}])
    assert message["tool_calls"][0]["function"]["arguments"] == "not json"


@pytest.mark.parametrize("fields, param", [
    ({"tools": {"type": "function"}}, "tools"),
    ({"tools": ["get_weather"]}, "tools"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "description": 3}}]}, "tools"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": 1}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"messages": [*CHAT, {"role": "assistant", "tool_calls": "x"}]}, "messages[1].tool_calls"),
    ({"messages": [*CHAT, {"role": "assistant", "tool_calls": [{"function": {}}]}]}, "messages[1].tool_calls[0]"),
    ({"messages": [*CHAT, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": 3}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"messages": [*CHAT, {"role": "tool", "tool_call_id": "call_1"}]}, "messages[1].content"),
])
def test_bad_tool_fields_get_a_400_naming_them(app, fields, param):
    result = chat(app, **fields)
    assert result.status_code == 400, result.text
    error = result.json["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_a_template_without_tools_refuses_them(tiny_model_dir):
    llm = load(tiny_model_dir("qwen3"), backend=selected_backends()[0], cpu=True)
    plain_app = falcon.testing.TestClient(create_app(llm, MODEL))
    result = chat(plain_app, tools=[WEATHER])
    assert result.status_code == 400 and result.json["error"]["param"] == "tools"
    assert chat(plain_app, tools=[WEATHER], tool_choice="none").status_code == 200


def test_openai_client_sends_tools(llm):
    srv = create_server(create_app(llm, MODEL), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{srv.effective_port}/v1", api_key="unused",
                               max_retries=0, timeout=60)
        answer = client.chat.completions.create(model=MODEL, messages=HISTORY, tools=[WEATHER, TIME],
                                                tool_choice="auto", max_tokens=3, extra_body={"ignore_eos": True})
        assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 3
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=MODEL, messages=CHAT, tools=[WEATHER], max_tokens=3,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}})
        assert caught.value.body["param"] == "tool_choice"
    finally:
        srv.close()


# ---- the answer builders the route uses, fed model text ------------------------------------------------

NO_THINKING = Thinking(split=False, starts_in_reasoning=False)
NAMES = {"get_weather", "get_time"}
ANSWER = ('I will check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
          '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')


def wrap_message(message: dict, finish_reason: str) -> ChatCompletion:
    return ChatCompletion.model_validate({
        "id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}]})


def test_answer_message_with_calls():
    message, finish = answer_message(ANSWER, "stop", NO_THINKING, NAMES)
    assert finish == "tool_calls" and message["content"] == "I will check."
    calls = wrap_message(message, finish).choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert all(c.type == "function" and c.id.startswith("call_") for c in calls)


def test_answer_message_variants():
    only_call = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    message, finish = answer_message(only_call, "stop", NO_THINKING, NAMES)
    assert message["content"] is None and finish == "tool_calls"
    # Cut off by max_tokens: the complete call is returned, and the reason stays "length".
    assert answer_message(only_call + "\n<tool_call>{", "length", NO_THINKING, NAMES)[1] == "length"
    # A call to a tool the request did not offer (or tools not parsed at all) stays text.
    for names in ({"get_weather"}, None):
        message, finish = answer_message(only_call, "stop", NO_THINKING, names)
        assert message == {"role": "assistant", "content": only_call} and finish == "stop"
    # Thinking first, then the call.
    thinking = Thinking(split=True, starts_in_reasoning=False)
    message, finish = answer_message("<think>\nWeather tool.\n</think>\n\n" + only_call, "stop", thinking, NAMES)
    assert message["reasoning_content"] == "Weather tool." and message["content"] is None
    assert message["tool_calls"][0]["function"]["name"] == "get_time" and finish == "tool_calls"
    wrap_message(message, finish)
    # Llama 3 format.
    message, finish = answer_message('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}',
                                     "stop", NO_THINKING, NAMES)
    assert message["content"] is None and message["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo"}'


def stream_deltas(text: str, size: int, thinking: Thinking = NO_THINKING) -> tuple[list[dict], str]:
    builder = ChoiceDeltas(thinking, NAMES)
    deltas = []
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    for i, piece in enumerate(pieces):
        deltas += builder.feed(piece, last=i == len(pieces) - 1)
    return deltas, builder.finish_reason("stop")


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_streamed_tool_call_deltas(size):
    deltas, finish = stream_deltas(ANSWER, size)
    assert finish == "tool_calls"
    chunks = [ChatCompletionChunk.model_validate({
        "id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}]}) for delta in deltas]
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or []]
    assert content == "I will check."
    assert [(c.index, c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        (0, "function", "get_weather", {"city": "Paris"}), (1, "function", "get_time", {})]
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id
    # The whole-answer builder agrees with the stream.
    message, _ = answer_message(ANSWER, "stop", NO_THINKING, NAMES)
    assert message["content"] == content


def test_streamed_thinking_then_call():
    text = "<think>\nLet me see.\n</think>\n\n" + '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    deltas, finish = stream_deltas(text, 2, Thinking(split=True, starts_in_reasoning=False))
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Let me see."
    assert not any("content" in d for d in deltas) and finish == "tool_calls"
    assert [d["tool_calls"][0]["function"]["name"] for d in deltas if "tool_calls" in d] == ["get_time"]


def test_streamed_answer_without_calls_keeps_its_finish_reason():
    deltas, finish = stream_deltas("Just text, with <tags> and {braces}.", 4)
    assert "".join(d["content"] for d in deltas) == "Just text, with <tags> and {braces}." and finish == "stop"
