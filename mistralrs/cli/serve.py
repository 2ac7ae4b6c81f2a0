"""`mistralrs serve`: the OpenAI-compatible HTTP server (not built yet: exits 2 naming it)."""

from __future__ import annotations

from mistralrs.cli.options import (
    GLOBAL,
    MODEL_LOADING,
    RUNTIME,
    SERVER,
    ModelType,
    ModelTypeArgument,
    Options,
    with_options,
)
from mistralrs.cli.unbuilt import refuse_unbuilt_command


@with_options(SERVER, RUNTIME, *MODEL_LOADING, GLOBAL)
def serve(model_type: ModelTypeArgument = ModelType.auto, *, opts: Options) -> None:
    """Start an HTTP server with OpenAI-compatible API endpoints."""
    refuse_unbuilt_command("serve")
