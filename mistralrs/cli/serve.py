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
    # Imported here: the server pulls in falcon and waitress, which --help should not wait for.
    from mistralrs.cli.request_log import RequestLog
    from mistralrs.http.app import create_app
    from mistralrs.http.server import create_server, serve_forever, threads_for

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = RequestLog(opts.get("log"))  # opened first: a bad path fails before the model loads
    llm = load_model(opts)
    app = create_app(llm, opts.model_id, server_seed=opts.get("seed"), max_seqs=opts.max_seqs, request_log=log)
    # Bind before announcing, so a port in use is an error here and not a line that lies.
    try:
        server = create_server(app, opts.host, opts.port, threads=threads_for(opts.max_seqs, None))
    except OSError as exc:
        raise UserError(f"Cannot listen on {opts.host}:{opts.port} ({exc.strerror or exc}); "
                        "pick another port with -p/--port or another address with --host.") from None
    host = "localhost" if opts.host in ("0.0.0.0", "::") else opts.host
    typer.echo(f"Serving {llm.model_id} ({llm.arch}, {llm.dtype}, {llm.backend}) on "
               f"http://{host}:{server.effective_port}/v1 (OpenAPI document: /openapi.json). Ctrl-C stops.",
               err=True)
    try:
        serve_forever(server)
    finally:
        log.close()
