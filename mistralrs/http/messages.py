"""Chat messages from a request body, checked and flattened into what chat templates expect."""

from __future__ import annotations

import json

from mistralrs.http.body import bad_request

# `developer` is OpenAI's newer name for `system`; chat templates only know `system`.
ROLE_ALIASES = {"developer": "system"}
ROLES = ("system", "developer", "user", "assistant", "tool")
# Fields a template may read; anything else in a message is dropped like other unknown fields.
PASSED_THROUGH = ("name", "tool_call_id", "reasoning_content", "reasoning")


def parse_messages(value) -> list[dict]:
    """`messages` as a list of {role, content, ...}; a bare string is one user message (a mistral.rs extension)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if value is None:
        raise bad_request("`messages` is required: a list of {role, content} objects.", "messages")
    if not isinstance(value, list):
        raise bad_request("`messages` must be a list of {role, content} objects.", "messages")
    if not value:
        raise bad_request("`messages` is empty: send at least one message.", "messages")
    return [_parse_message(message, f"messages[{i}]") for i, message in enumerate(value)]


def _parse_message(message, where: str) -> dict:
    if not isinstance(message, dict):
        raise bad_request(f"`{where}` must be an object with `role` and `content`.", where)
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise bad_request(f"`{where}.role` must be one of {', '.join(ROLES)}; got {role!r}.", f"{where}.role")
    content = message.get("content")
    if content is None and role != "assistant":  # an assistant turn may hold only tool_calls
        raise bad_request(f"`{where}.content` is required for a {role} message.", f"{where}.content")
    parsed = {"role": ROLE_ALIASES.get(role, role), "content": _content_text(content, f"{where}.content")}
    for key in PASSED_THROUGH:
        if message.get(key) is not None:
            parsed[key] = message[key]
    if message.get("tool_calls") is not None:
        parsed["tool_calls"] = _tool_calls(message["tool_calls"], f"{where}.tool_calls")
    return parsed


def _tool_calls(value, where: str) -> list[dict]:
    """An assistant turn's tool calls, with JSON-string arguments decoded into objects.

    OpenAI sends `arguments` as a JSON string; templates such as Llama 3's write
    `arguments | tojson` and expect a mapping (Qwen's accepts either), so a string
    that holds a JSON object is decoded, as mistral.rs and vLLM do. Any other
    string is passed through unchanged.
    """
    if not isinstance(value, list):
        raise bad_request(f"`{where}` must be a list of tool calls.", where)
    calls = []
    for i, call in enumerate(value):
        here = f"{where}[{i}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(f"`{here}` must be an object with `function: {{name, arguments}}`.", here)
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                decoded = json.loads(arguments)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict):
                arguments = decoded
        elif arguments is not None and not isinstance(arguments, dict):
            raise bad_request(f"`{here}.function.arguments` must be a JSON string or an object.",
                              f"{here}.function.arguments")
        calls.append({**call, "function": {**function, "arguments": {} if arguments is None else arguments}})
    return calls


def _content_text(content, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"`{where}` must be a string or a list of content parts.", where)
    texts = []
    for i, part in enumerate(content):
        here = f"{where}[{i}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad_request(f"`{here}` must be an object with a `type`, e.g. {{\"type\": \"text\", \"text\": ...}}.",
                              here)
        if part["type"] != "text":
            raise bad_request(
                f"Content part type `{part['type']}` is not supported: this server runs a text model, "
                "so send only parts of type `text`.", f"{here}.type")
        if not isinstance(part.get("text"), str):
            raise bad_request(f"`{here}.text` must be a string.", f"{here}.text")
        texts.append(part["text"])
    # One paragraph per part, as vLLM and the HF processors join them.
    return "\n".join(texts)
