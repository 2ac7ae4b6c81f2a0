"""Errors a user can fix.

Everything the user gives us (a model folder, a CLI option, an HTTP body, a
template) is validated at the edge; when it is wrong we raise `UserError` with
one paragraph that names the problem and the fix. The CLI prints it and exits
with code 2; the server turns it into a 400 with an OpenAI-style error body.
Anything else that escapes is a bug in mistralrs, not in the user's input.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message says what is wrong and how to fix it."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param  # the request field or option at fault, when there is one


class ModelLoadError(UserError):
    """A model folder, file or hub id that cannot be loaded as given."""


class TemplateError(UserError):
    """A chat template that fails to render (including `raise_exception`)."""
