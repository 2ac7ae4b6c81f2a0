"""`mistralrs serve`: the OpenAI-compatible HTTP server."""

from __future__ import annotations

import logging

import typer

from mistralrs.cli.loading import check_loading_options, load_model
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
from mistralrs.errors import UserError


@with_options(SERVER, RUNTIME, *MODEL_LOADING, GLOBAL)
def serve(model_type: ModelTypeArgument = ModelType.auto, *, opts: Options) -> None:
    """Start an HTTP server with OpenAI-compatible API endpoints."""
    check_loading_options(opts, model_type)
    serve_models([opts], opts)


def serve_models(models: list[Options], server_opts: Options, default_model_id: str | None = None) -> None:
    """Load every model, then serve them all on `server_opts`' host and port (also `from-config`'s way)."""
    # Imported here: the server pulls in falcon and waitress, which --help should not wait for.
    from mistralrs.cli.request_log import RequestLog
    from mistralrs.http.app import create_multi_app
    from mistralrs.http.server import create_server, serve_forever, threads_for

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = RequestLog(server_opts.get("log"))  # opened first: a bad path fails before the models load
    max_seqs = server_opts.max_seqs
    llms = [load_model(opts) for opts in models]
    app = create_multi_app([(llm, opts.model_id) for llm, opts in zip(llms, models, strict=True)],
                           default_model_id=default_model_id, server_seed=server_opts.get("seed"),
                           max_seqs=max_seqs, request_log=log)
    # Bind before announcing, so a port in use is an error here and not a line that lies.
    try:
        # Every model's scheduler may hold max_seqs sequences and queue more, each on a thread.
        server = create_server(app, server_opts.host, server_opts.port,
                               threads=threads_for(max_seqs * len(models), None))
    except OSError as exc:
        raise UserError(f"Cannot listen on {server_opts.host}:{server_opts.port} ({exc.strerror or exc}); "
                        "pick another port with -p/--port or another address with --host.") from None
    host = "localhost" if server_opts.host in ("0.0.0.0", "::") else server_opts.host
    names = ", ".join(f"{llm.model_id} ({llm.arch}, {llm.dtype}, {llm.backend})" for llm in llms)
    typer.echo(f"Serving {names} on http://{host}:{server.effective_port}/v1 "
               "(OpenAPI document: /openapi.json). Ctrl-C stops.", err=True)
    try:
        serve_forever(server)
    finally:
        log.close()
