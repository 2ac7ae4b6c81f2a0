"""Reading a JSON request body and its fields with exact types, so a bad field gets a 400 naming it."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import falcon

from mistralrs.http.errors import ApiError

MAX_BODY_BYTES = 32 * 1024 * 1024  # far beyond any context window's worth of text
# A \uD800-\uDFFF escape: JSON allows it, but a lone one is no Unicode text (the tokenizer rejects it).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def read_json_object(req: falcon.Request) -> dict:
    """The body as a dict; a 4xx for a wrong content type, an oversize body, bad JSON or a non-object."""
    content_type = (req.content_type or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, f"Send the body as JSON with `Content-Type: application/json` "
                            f"(got {req.content_type or 'no content type'}).")
    length = req.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise ApiError(413, f"The body is {length} bytes; the limit is {MAX_BODY_BYTES}.")
    raw = req.bounded_stream.read()
    try:
        data = json.loads(raw, parse_constant=_reject_constant)  # NaN and Infinity are not JSON
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"The body is not valid JSON: {exc}.") from None
    except RecursionError:
        raise bad_request("The body's JSON is nested too deeply.") from None
    if _SURROGATE_ESCAPE.search(raw):
        try:  # pairs are fine; a lone surrogate cannot be encoded
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request("The body's JSON holds a lone UTF-16 surrogate (\\ud800-\\udfff), "
                              "which is not text.") from None
    if not isinstance(data, dict):
        raise bad_request(f"The body must be a JSON object, not {_json_type(data)}.")
    return data


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class Fields:
    """Typed access to a request object's fields. null counts as absent, as in the OpenAI API."""

    def __init__(self, data: dict, prefix: str = ""):
        self.data = data
        self.prefix = prefix

    def name(self, key: str) -> str:
        return self.prefix + key

    def present(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str) -> Any:
        return self.data.get(key)

    def wrong_type(self, key: str, expected: str) -> ApiError:
        return bad_request(f"`{self.name(key)}` must be {expected}, not {_json_type(self.data[key])}.",
                           self.name(key))

    def integer(self, key: str, default: int | None = None, *, low: int | None = None,
                high: int | None = None) -> int | None:
        value = self.data.get(key)
        if value is None:
            return default
        # JSON has one number type: 3.0 is an integer, 3.5 is not; true is never one.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.wrong_type(key, "an integer")
        self._check_range(key, value, low, high)
        return value

    def number(self, key: str, default: float | None = None, *, low: float | None = None,
               high: float | None = None) -> float | None:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.wrong_type(key, "a number")
        self._check_range(key, value, low, high)
        return float(value)

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.wrong_type(key, "true or false")
        return value

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.wrong_type(key, "a string")
        return value

    def obj(self, key: str) -> Fields | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.wrong_type(key, "an object")
        return Fields(value, self.name(key) + ".")

    def _check_range(self, key: str, value, low, high) -> None:
        if (low is not None and value < low) or (high is not None and value > high):
            if low is not None and high is not None:
                why = f"between {low} and {high}"
            else:
                why = f"at least {low}" if low is not None else f"at most {high}"
            raise bad_request(f"`{self.name(key)}` must be {why}, got {value}.", self.name(key))
