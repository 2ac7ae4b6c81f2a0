"""Chat template rendering against transformers' apply_chat_template, template loading, and thinking parsing."""

from __future__ import annotations

import json
import random
from datetime import datetime

import pytest

from mistralrs.engine.chat_template import (
    ChatTemplate,
    ThinkingStream,
    load_chat_template,
    prompt_opens_thinking,
    split_thinking,
)
from mistralrs.engine.tokenizer import Tokenizer
from mistralrs.errors import TemplateError

try:
    from tokenizer_fixtures import require_npm_tokenizer
except ImportError:  # tests/ collected as a package
    from tests.tokenizer_fixtures import require_npm_tokenizer

transformers = pytest.importorskip("transformers")

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": 'Current weather <now> & "later" in a city — é',
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}

CONVERSATIONS = {
    "single": [{"role": "user", "content": "Hi!"}],
    "system_multi_turn": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Capital of France? 🇫🇷 «ça va»"},
    ],
    "tool_call": [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
            ],
        },
        {"role": "tool", "content": '{"temperature": 22}'},
    ],
    "reasoning_history": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "Simple addition."},
        {"role": "user", "content": "And 3+3?"},
    ],
}

# Gemma's template insists on user/assistant alternation, so a tool turn is an error there (checked below).
ALTERNATING = ["single", "system_multi_turn", "reasoning_history"]


@pytest.fixture(scope="module", params=["qwen3", "llama3", "gemma3"])
def model(request):
    """(name, our ChatTemplate, transformers' tokenizer) for one real tokenizer folder."""
    folder = require_npm_tokenizer(request.param)
    ours = load_chat_template(str(folder), Tokenizer.from_dir(str(folder)))
    return request.param, ours, transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def llama3_hf():
    """A quick-to-load transformers tokenizer, used to render ad-hoc templates as the reference."""
    return transformers.AutoTokenizer.from_pretrained(require_npm_tokenizer("llama3"))


def _conversations_for(name):
    return [c for c in CONVERSATIONS if name != "gemma3" or c in ALTERNATING]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("with_tools", [False, True])
def test_render_matches_transformers(model, add_generation_prompt, with_tools):
    name, ours, hf = model
    tools = [WEATHER_TOOL] if with_tools else None
    for conversation in _conversations_for(name):
        messages = CONVERSATIONS[conversation]
        expected = hf.apply_chat_template(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False
        )
        rendered = ours.render(messages, tools=tools, add_generation_prompt=add_generation_prompt)
        assert rendered == expected, conversation


@pytest.mark.parametrize("enable_thinking", [True, False])
def test_qwen3_enable_thinking_matches_transformers(enable_thinking):
    folder = require_npm_tokenizer("qwen3")
    ours = load_chat_template(str(folder), Tokenizer.from_dir(str(folder)))
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    for conversation in CONVERSATIONS.values():
        for tools in (None, [WEATHER_TOOL]):
            expected = hf.apply_chat_template(
                conversation,
                tools=tools,
                add_generation_prompt=True,
                tokenize=False,
                enable_thinking=enable_thinking,
            )
            rendered = ours.render(conversation, tools=tools, enable_thinking=enable_thinking)
            assert rendered == expected
            # With thinking off the template writes an empty, closed block into the prompt.
            assert not prompt_opens_thinking(rendered)
    assert ours.thinks


def test_thinks_only_for_reasoning_templates(model):
    name, ours, _ = model
    assert ours.thinks == (name == "qwen3")


def test_template_error_carries_the_templates_message(model):
    name, ours, hf = model
    if name != "gemma3":
        pytest.skip("only Gemma's template checks role alternation")
    messages = CONVERSATIONS["tool_call"]
    with pytest.raises(Exception) as reference:
        hf.apply_chat_template(messages, tokenize=False)
    with pytest.raises(TemplateError) as ours_error:
        ours.render(messages)
    assert ours_error.value.template_message == str(reference.value)
    assert str(reference.value) in ours_error.value.message
    assert ours_error.value.param == "messages"


# ---- the Jinja environment, each feature rendered by transformers as the reference ----------------

FEATURE_TEMPLATES = {
    "loop_controls": (
        "{% for m in messages %}{% if loop.index0 == 1 %}{% continue %}{% endif %}"
        "{{ m.content }};{% if loop.index0 == 2 %}{% break %}{% endif %}{% endfor %}"
    ),
    "tojson_options": (
        "{{ tools | tojson }}\n{{ tools | tojson(indent=2) }}\n"
        "{{ tools[0] | tojson(separators=(',', ':'), sort_keys=true) }}\n{{ tools | tojson(ensure_ascii=true) }}"
    ),
    "whitespace_control": (
        "{% for m in messages %}\n    {% if m.role == 'user' %}\n  U: {{ m.content }}\n    {% else %}\n"
        "  A: {{ m.content }}\n    {%- endif %}\n{% endfor %}\n{%- if add_generation_prompt %}\n  A:{% endif %}"
    ),
    "namespace_and_dict": (
        "{% set ns = namespace(count=0) %}{% for m in messages %}{% set ns.count = ns.count + 1 %}"
        "{% endfor %}{{ ns.count }} {{ dict(a=1, b=2) | tojson }} {{ bos_token }}|{{ eos_token }}"
    ),
    "none_values_dropped": (
        "{% for m in messages %}{{ m.role }}:{{ m.content is defined }}:"
        "{{ m.tool_calls is defined }}:{{ m.reasoning_content | default('-') }};{% endfor %}"
    ),
    "generation_tag": "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}",
}

FEATURE_MESSAGES = [
    {"role": "system", "content": "sys"},
    {"role": "user", "content": "one"},
    {"role": "assistant", "content": None, "tool_calls": None, "thinking": "hmm"},
    {"role": "user", "content": "three"},
]


@pytest.mark.parametrize("feature", sorted(FEATURE_TEMPLATES))
def test_jinja_features_match_transformers(llama3_hf, feature):
    source = FEATURE_TEMPLATES[feature]
    expected = llama3_hf.apply_chat_template(
        FEATURE_MESSAGES,
        chat_template=source,
        tools=[WEATHER_TOOL],
        add_generation_prompt=True,
        tokenize=False,
    )
    template = ChatTemplate(source, "test", special_tokens=_special_tokens(llama3_hf))
    assert template.render(FEATURE_MESSAGES, tools=[WEATHER_TOOL]) == expected


def _special_tokens(hf):
    return dict(hf.special_tokens_map)


def test_strftime_now():
    template = ChatTemplate("{{ strftime_now('%Y-%m-%d %H') }}", "test")
    before = datetime.now().strftime("%Y-%m-%d %H")
    rendered = template.render([{"role": "user", "content": "x"}])
    after = datetime.now().strftime("%Y-%m-%d %H")
    assert rendered in (before, after)


def test_explicit_special_tokens_win():
    template = ChatTemplate(
        "{{ bos_token }}{{ eos_token }}{{ pad_token }}", "test", {"bos_token": "<s>", "pad_token": "P"}
    )
    messages = [{"role": "user", "content": "x"}]
    assert template.render(messages) == "<s>P"
    assert template.render(messages, bos_token="B", eos_token="E") == "BEP"


def test_raise_exception_becomes_template_error():
    template = ChatTemplate(
        "{% if messages[0].role != 'system' %}{{ raise_exception('Need a system turn') }}{% endif %}",
        "t.jinja",
    )
    with pytest.raises(TemplateError) as info:
        template.render([{"role": "user", "content": "x"}])
    assert info.value.template_message == "Need a system turn"
    assert "t.jinja" in info.value.message


def test_runtime_error_in_template_is_a_template_error():
    template = ChatTemplate("line one\n{{ messages[0].content + 1 }}", "t.jinja")
    with pytest.raises(TemplateError) as info:
        template.render([{"role": "user", "content": "x"}])
    assert "t.jinja" in info.value.message
    assert "line 2" in info.value.message


def test_sandbox_blocks_python_internals():
    template = ChatTemplate("{{ messages.__class__.__mro__ }}", "evil.jinja")
    with pytest.raises(TemplateError):
        template.render([{"role": "user", "content": "x"}])


def test_empty_conversation_is_rejected():
    with pytest.raises(TemplateError):
        ChatTemplate("{{ messages }}", "t").render([])


# ---- loading: precedence and bad files ---------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen3_tokenizer():
    return Tokenizer.from_dir(str(require_npm_tokenizer("qwen3")))


def test_precedence(tmp_path, qwen3_tokenizer):
    explicit = tmp_path / "explicit.jinja"
    explicit.write_text("EXPLICIT")
    as_jinja = tmp_path / "t.jinja"
    as_jinja.write_text("JINJA {{ eos_token }}")
    as_json = tmp_path / "t.json"
    as_json.write_text(json.dumps({"chat_template": "JSON"}))
    messages = [{"role": "user", "content": "x"}]

    def render(**options):
        return load_chat_template(str(tmp_path), qwen3_tokenizer, **options).render(messages)

    assert render(jinja_explicit=str(explicit), chat_template=str(as_jinja)) == "EXPLICIT"
    assert render(chat_template=str(as_jinja)) == f"JINJA {qwen3_tokenizer.eos_token}"
    assert render(chat_template=str(as_json)) == "JSON"
    assert render(chat_template="{% for m in messages %}LITERAL {{ m.content }}{% endfor %}") == "LITERAL x"
    model_template = load_chat_template(str(tmp_path), qwen3_tokenizer)
    assert model_template.source == qwen3_tokenizer.chat_template


def test_no_template_anywhere(tmp_path, qwen3_tokenizer):
    backend = qwen3_tokenizer.backend
    assert load_chat_template(str(tmp_path), Tokenizer(backend, {}, None, "x")) is None


def _load_error(tmp_path, tokenizer, **options) -> str:
    with pytest.raises(TemplateError) as info:
        load_chat_template(str(tmp_path), tokenizer, **options)
    return info.value.message


def test_missing_files(tmp_path, qwen3_tokenizer):
    missing = str(tmp_path / "missing.jinja")
    message = _load_error(tmp_path, qwen3_tokenizer, jinja_explicit=missing)
    assert missing in message and "--jinja-explicit" in message
    message = _load_error(tmp_path, qwen3_tokenizer, chat_template=missing)
    assert missing in message and "--chat-template" in message


def test_invalid_json_file(tmp_path, qwen3_tokenizer):
    path = tmp_path / "t.json"
    path.write_text('{\n  "chat_template": "x",\n  oops\n}')
    message = _load_error(tmp_path, qwen3_tokenizer, chat_template=str(path))
    assert str(path) in message and "line 3" in message and ".jinja" in message


def test_json_without_chat_template(tmp_path, qwen3_tokenizer):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"template": "x"}))
    message = _load_error(tmp_path, qwen3_tokenizer, chat_template=str(path))
    assert str(path) in message and '"chat_template"' in message


@pytest.mark.parametrize("option", ["chat_template", "jinja_explicit"])
def test_jinja_syntax_error(tmp_path, qwen3_tokenizer, option):
    path = tmp_path / "broken.jinja"
    path.write_text("{% for m in messages %}\n{{ m.content }}\n{% if %}\n{% endfor %}")
    message = _load_error(tmp_path, qwen3_tokenizer, **{option: str(path)})
    assert str(path) in message and "line 3" in message and "--chat-template" in message


# ---- thinking ----------------------------------------------------------------------------------------

THINKING_CASES = {
    # text: (starts_in_reasoning, expected reasoning, expected content)
    "<think>\nLet me add.\n2+2=4\n</think>\n\nThe answer is 4.": (
        False,
        "Let me add.\n2+2=4",
        "The answer is 4.",
    ),
    "  <think>a</think>b": (False, "a", "b"),
    "<think>\n\n</think>\n\nHi there": (False, "", "Hi there"),
    "Plain answer, no tags.": (False, None, "Plain answer, no tags."),
    "Talk about <think> tags in an answer": (False, None, "Talk about <think> tags in an answer"),
    "<thinking> is not the tag": (False, None, "<thinking> is not the tag"),
    "<think>cut off by max_tokens </thi": (False, "cut off by max_tokens </thi", ""),
    "opened by the prompt\n</think>\n\nAnswer.": (True, "opened by the prompt", "Answer."),
    "still thinking at the end  \n": (True, "still thinking at the end", ""),
    "   \n": (False, None, "   \n"),
}


@pytest.mark.parametrize("text", list(THINKING_CASES))
def test_split_thinking(text):
    starts_in_reasoning, reasoning, content = THINKING_CASES[text]
    assert split_thinking(text, starts_in_reasoning=starts_in_reasoning) == (reasoning, content)


def test_split_thinking_guesses_a_block_opened_by_the_prompt():
    assert split_thinking("reasoning</think>answer") == ("reasoning", "answer")
    assert split_thinking("<think>r</think>a") == ("r", "a")
    assert split_thinking("no tags") == (None, "no tags")


def _stream_split(text, chunk_sizes, starts_in_reasoning):
    stream = ThinkingStream(starts_in_reasoning=starts_in_reasoning)
    pieces, position = [], 0
    for size in chunk_sizes:
        pieces += stream.feed(text[position : position + size])
        position += size
    pieces += stream.feed(text[position:]) + stream.finish()
    assert all(piece for _, piece in pieces)
    reasoning = "".join(piece for kind, piece in pieces if kind == "reasoning")
    content = "".join(piece for kind, piece in pieces if kind == "content")
    return (reasoning if stream.saw_reasoning else None), content


@pytest.mark.parametrize("text", list(THINKING_CASES))
def test_thinking_stream_agrees_with_split_thinking_for_any_chunking(text):
    starts_in_reasoning = THINKING_CASES[text][0]
    expected = split_thinking(text, starts_in_reasoning=starts_in_reasoning)
    assert _stream_split(text, [1] * len(text), starts_in_reasoning) == expected
    rng = random.Random(text)
    for _ in range(50):
        sizes = [rng.randint(0, 6) for _ in range(len(text))]
        assert _stream_split(text, sizes, starts_in_reasoning) == expected


def test_thinking_stream_emits_as_it_goes():
    stream = ThinkingStream()
    assert stream.feed("<thi") == []
    assert stream.feed("nk>\nStep one") == [("reasoning", "Step one")]
    assert stream.feed(". </th") == [("reasoning", ".")]
    assert stream.feed("ink>\n\nDone") == [("content", "Done")]
    assert stream.finish() == []


def test_prompt_opens_thinking():
    assert prompt_opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not prompt_opens_thinking("<|im_start|>assistant\n")
