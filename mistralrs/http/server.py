"""Serving the WSGI app with waitress (pure Python, on every platform the backends run on)."""

from __future__ import annotations

import waitress
from waitress.server import BaseWSGIServer

# Threads serve requests; generations still run one at a time through the LLM's lock, so
# the spare threads keep /health, /v1/models and request validation answering meanwhile.
THREADS = 8


def create_server(app, host: str, port: int) -> BaseWSGIServer:
    """A bound (not yet running) server; port 0 picks a free port, read back from `.effective_port`.

    Streaming relies on waitress's default `send_bytes=1` (deprecated as a setting, so not
    passed): every write the app yields is flushed to the socket at once, so each SSE chunk
    leaves when it is produced. Nothing here may raise it.
    """
    return waitress.create_server(
        app,
        host=host,
        port=port,
        threads=THREADS,
        ident="mistralrs",
        clear_untrusted_proxy_headers=True,
    )


def serve_forever(server: BaseWSGIServer) -> None:
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
