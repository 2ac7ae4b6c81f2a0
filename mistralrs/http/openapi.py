"""GET /openapi.json: an OpenAPI 3 description of the routes this server has, for clients and tools."""

from __future__ import annotations

import falcon

from mistralrs import __version__


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


NUMBER, INTEGER, BOOLEAN, STRING = ({"type": t} for t in ("number", "integer", "boolean", "string"))

SAMPLING_FIELDS = {
    "model": {**STRING, "description": "The served model id, or `default`; omitted means the served model."},
    "max_tokens": {**INTEGER, "minimum": 1},
    "temperature": {**NUMBER, "minimum": 0, "maximum": 2},
    "top_p": {**NUMBER, "exclusiveMinimum": 0, "maximum": 1},
    "top_k": {**INTEGER, "minimum": 0},
    "min_p": {**NUMBER, "minimum": 0, "maximum": 1},
    "n": {**INTEGER, "minimum": 1, "maximum": 128, "default": 1},
    "stop": {"anyOf": [STRING, {"type": "array", "items": STRING}]},
    "stream": {**BOOLEAN, "default": False},
    "stream_options": {"type": "object", "properties": {"include_usage": BOOLEAN}},
    "logit_bias": {"type": "object", "additionalProperties": {**NUMBER, "minimum": -100, "maximum": 100},
                   "description": "Token id (as a string) to a bias added to its logit."},
    "presence_penalty": {**NUMBER, "minimum": -2, "maximum": 2},
    "frequency_penalty": {**NUMBER, "minimum": -2, "maximum": 2},
    "repetition_penalty": {**NUMBER, "exclusiveMinimum": 0},
    "seed": {**INTEGER, "description": "The same seed and request give the same output."},
    "ignore_eos": {**BOOLEAN, "default": False},
}

FUNCTION_CALL = {"type": "object", "required": ["name", "arguments"],
                 "properties": {"name": STRING, "arguments": {**STRING, "description": "A JSON object, as text."}}}
TOOL_CALL = {"type": "object", "required": ["id", "type", "function"],
             "properties": {"id": STRING, "type": {"const": "function"}, "function": FUNCTION_CALL}}
TOOL = {"type": "object", "required": ["type", "function"], "properties": {
    "type": {"const": "function"},
    "function": {"type": "object", "required": ["name"], "properties": {
        "name": {**STRING, "pattern": "^[a-zA-Z0-9_-]{1,64}$"}, "description": STRING,
        "parameters": {"type": "object", "description": "A JSON Schema for the arguments."}}}}}
TOOL_CHOICE = {
    "anyOf": [{"enum": ["none", "auto", "required"]},
              {"type": "object", "required": ["type", "function"],
               "properties": {"type": {"const": "function"},
                              "function": {"type": "object", "required": ["name"], "properties": {"name": STRING}}}}],
    "description": "Not enforced by constrained decoding: with `required` or a named function, an answer "
                   "without a matching call is returned as content with finish_reason `stop`.",
}
CONTENT_PART = {"type": "object", "required": ["type", "text"],
                "properties": {"type": {"const": "text"}, "text": STRING}}
MESSAGE = {
    "type": "object", "required": ["role"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"anyOf": [STRING, {"type": "array", "items": CONTENT_PART}, {"type": "null"}]},
        "name": STRING, "tool_call_id": STRING, "reasoning_content": STRING,
        "tool_calls": {"type": "array", "items": TOOL_CALL},
    },
}
USAGE = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
         "properties": {"prompt_tokens": INTEGER, "completion_tokens": INTEGER, "total_tokens": INTEGER}}
FINISH_REASON = _nullable({"enum": ["stop", "length", "tool_calls"]})
TOP_LOGPROB = {"type": "object", "properties": {"token": STRING, "logprob": NUMBER,
                                                "bytes": {"type": "array", "items": INTEGER}}}
CHAT_LOGPROBS = _nullable({"type": "object", "properties": {"content": {"type": "array", "items": {
    "type": "object", "properties": {**TOP_LOGPROB["properties"],
                                     "top_logprobs": {"type": "array", "items": TOP_LOGPROB}}}}}})
ANSWER_MESSAGE = {"type": "object", "properties": {"role": {"const": "assistant"}, "content": _nullable(STRING),
                                                    "reasoning_content": STRING,
                                                    "tool_calls": {"type": "array", "items": TOOL_CALL}}}
TOOL_CALL_DELTA = {"type": "object", "required": ["index"],
                   "properties": {"index": INTEGER, **TOOL_CALL["properties"]}}
ANSWER_DELTA = {"type": "object", "properties": {**ANSWER_MESSAGE["properties"],
                                                 "tool_calls": {"type": "array", "items": TOOL_CALL_DELTA}}}

SCHEMAS = {
    "ChatCompletionRequest": {
        "type": "object", "required": ["messages"],
        "properties": {
            **SAMPLING_FIELDS,
            "messages": {"anyOf": [{"type": "array", "items": MESSAGE, "minItems": 1}, STRING]},
            "max_completion_tokens": {**INTEGER, "minimum": 1},
            "logprobs": {**BOOLEAN, "default": False},
            "top_logprobs": {**INTEGER, "minimum": 0, "maximum": 20},
            "enable_thinking": BOOLEAN,
            "chat_template_kwargs": {"type": "object", "description": "Extra variables for the chat template."},
            "tools": {"type": "array", "items": TOOL},
            "tool_choice": TOOL_CHOICE,
            "parallel_tool_calls": BOOLEAN,
        },
    },
    "CompletionRequest": {
        "type": "object", "required": ["prompt"],
        "properties": {
            **SAMPLING_FIELDS,
            "prompt": {"anyOf": [STRING, {"type": "array", "items": STRING}, {"type": "array", "items": INTEGER},
                                 {"type": "array", "items": {"type": "array", "items": INTEGER}}]},
            "echo": {**BOOLEAN, "default": False},
            "logprobs": {**INTEGER, "minimum": 0, "maximum": 20},
        },
    },
    "ChatCompletion": {
        "type": "object",
        "properties": {
            "id": STRING, "object": {"const": "chat.completion"}, "created": INTEGER, "model": STRING,
            "choices": {"type": "array", "items": {"type": "object", "properties": {
                "index": INTEGER, "message": ANSWER_MESSAGE, "finish_reason": FINISH_REASON,
                "logprobs": CHAT_LOGPROBS}}},
            "usage": _ref("Usage"),
        },
    },
    "ChatCompletionChunk": {
        "type": "object",
        "description": "One `data:` event of a streamed chat completion; the stream ends with `data: [DONE]`.",
        "properties": {
            "id": STRING, "object": {"const": "chat.completion.chunk"}, "created": INTEGER, "model": STRING,
            "choices": {"type": "array", "items": {"type": "object", "properties": {
                "index": INTEGER, "delta": ANSWER_DELTA, "finish_reason": FINISH_REASON,
                "logprobs": CHAT_LOGPROBS}}},
            "usage": _nullable(_ref("Usage")),
        },
    },
    "Completion": {
        "type": "object",
        "description": "Also the shape of each streamed `data:` event (then `data: [DONE]`).",
        "properties": {
            "id": STRING, "object": {"const": "text_completion"}, "created": INTEGER, "model": STRING,
            "choices": {"type": "array", "items": {"type": "object", "properties": {
                "index": INTEGER, "text": STRING, "finish_reason": FINISH_REASON,
                "logprobs": _nullable({"type": "object", "properties": {
                    "tokens": {"type": "array", "items": STRING},
                    "token_logprobs": {"type": "array", "items": NUMBER},
                    "top_logprobs": {"type": "array", "items": {"type": "object",
                                                                "additionalProperties": NUMBER}},
                    "text_offset": {"type": "array", "items": INTEGER}}})}}},
            "usage": _nullable(_ref("Usage")),
        },
    },
    "Usage": USAGE,
    "ModelList": {"type": "object", "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
        "type": "object", "properties": {"id": STRING, "object": {"const": "model"}, "created": INTEGER,
                                         "owned_by": STRING, "status": STRING}}}}},
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type"],
        "properties": {"message": STRING, "type": STRING, "param": _nullable(STRING), "code": _nullable(STRING)}}}},
}


def _json(schema_name: str) -> dict:
    return {"application/json": {"schema": _ref(schema_name)}}


def _errors(*statuses: int) -> dict:
    return {str(status): {"description": description, "content": _json("Error")}
            for status, description in ((400, "Invalid request"), (404, "Unknown model"),
                                        (415, "Body is not JSON"), (500, "Internal error"))
            if status in statuses}


def _generation_route(summary: str, request: str, response: str, chunk: str) -> dict:
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True, "content": _json(request)},
        "responses": {
            "200": {"description": f"A {response}; with `stream: true`, server-sent events of {chunk}.",
                    "content": {**_json(response), "text/event-stream": {"schema": _ref(chunk)}}},
            **_errors(400, 404, 415, 500),
            "503": {"description": "The waiting queue is full; retry after `Retry-After` seconds.",
                    "headers": {"Retry-After": {"description": "Seconds to wait before retrying.",
                                                "schema": INTEGER}},
                    "content": _json("Error")},
        },
    }}


def openapi_document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "mistralrs", "version": __version__,
                 "description": "OpenAI-compatible API served by `mistralrs serve`."},
        "paths": {
            "/v1/chat/completions": _generation_route("Chat completion", "ChatCompletionRequest",
                                                      "ChatCompletion", "ChatCompletionChunk"),
            "/v1/completions": _generation_route("Text completion", "CompletionRequest", "Completion", "Completion"),
            "/v1/models": {"get": {"summary": "The served model",
                                   "responses": {"200": {"description": "Model list", "content": _json("ModelList")}}}},
            "/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "The server is up"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics: requests by endpoint and status, prompt and "
                                            "generated tokens, running and waiting sequences, time to first "
                                            "token and inter-token latency",
                                 "responses": {"200": {"description": "Prometheus text exposition format 0.0.4",
                                                       "content": {"text/plain": {"schema": STRING}}}}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3 document"}}}},
        },
        "components": {"schemas": SCHEMAS},
    }


class OpenApi:
    def __init__(self):
        self.document = openapi_document()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.document
