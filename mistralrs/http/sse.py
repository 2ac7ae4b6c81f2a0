"""Server-sent events as the OpenAI API streams them: `data: {json}` per chunk, then `data: [DONE]`.

The response body is a generator that the WSGI server (waitress) writes chunk by
chunk as it is produced. When the client disconnects, waitress stops iterating and
calls the generator's close(), which runs the producers' `finally` blocks: that is
what cancels a generation nobody is reading any more.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import falcon

from mistralrs.http.errors import error_body

log = logging.getLogger("mistralrs.http")

DONE = b"data: [DONE]\n\n"


def sse_event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n\n"


def _guarded(events: Iterator[bytes]) -> Iterator[bytes]:
    # The status line is already sent when a generation fails midway, so the error goes in the stream.
    try:
        yield from events
    except Exception as exc:
        log.exception("Internal error while streaming a response")
        message = f"Internal server error while streaming ({type(exc).__name__}: {exc})."
        yield sse_event(error_body(message, "server_error"))
        yield DONE


def stream_events(resp: falcon.Response, events: Iterator[bytes]) -> None:
    resp.content_type = "text/event-stream"
    resp.set_header("Cache-Control", "no-cache")
    resp.set_header("X-Accel-Buffering", "no")  # tells nginx-style proxies not to buffer the stream
    resp.stream = _guarded(events)
