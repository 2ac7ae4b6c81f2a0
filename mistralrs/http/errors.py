"""OpenAI-style error bodies for every failure: bad requests, unknown routes, and our own bugs.

Clients written for the OpenAI API read `error.message` and `error.param`, and
the official SDKs pick the exception class from the status code, so every error
the server sends (including Falcon's own 404/405) has the same shape.
"""

from __future__ import annotations

import json
import logging

import falcon

from mistralrs.errors import UserError

log = logging.getLogger("mistralrs.http")


class ApiError(falcon.HTTPError):
    """An error the client can fix, sent as {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 error_type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(falcon.code_to_http_status(status), description=message, headers=headers)
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _serialize_http_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    # Falcon raises its own HTTPErrors (unknown route, wrong method); they get the same shape as ours.
    if isinstance(exc, ApiError):
        body = error_body(exc.message, exc.error_type, exc.param, exc.code)
    else:
        message = exc.description or exc.title or "Request failed."
        if exc.status_code == 404:
            message = f"No route for {req.method} {req.path}; see /openapi.json for the routes."
        elif exc.status_code == 405:
            message = f"{req.method} is not allowed on {req.path}."
        error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        body = error_body(message, error_type, None, _status_code_name(exc.status_code))
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(body)


def _status_code_name(status: int) -> str | None:
    return {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(status)


def server_busy(message: str, retry_after_s: int) -> ApiError:
    """503 for a full waiting queue: OpenAI clients retry it, after `Retry-After` seconds."""
    return ApiError(503, message, code="server_busy", error_type="server_error",
                    headers={"Retry-After": str(retry_after_s)})


def _user_error_handler(req, resp, exc: UserError, params) -> None:
    resp.status = falcon.HTTP_400
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(error_body(exc.message, "invalid_request_error", exc.param))


def _internal_error_handler(req, resp, exc: Exception, params) -> None:
    log.exception("Internal error while handling %s %s", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.content_type = falcon.MEDIA_JSON
    message = f"Internal server error ({type(exc).__name__}: {exc}); this is a bug in mistralrs, not in the request."
    resp.text = json.dumps(error_body(message, "server_error"))


def install_error_handlers(app: falcon.App) -> None:
    # Handlers are matched most-specific first, so UserError wins over Exception.
    app.add_error_handler(Exception, _internal_error_handler)
    app.add_error_handler(UserError, _user_error_handler)
    app.set_error_serializer(_serialize_http_error)
