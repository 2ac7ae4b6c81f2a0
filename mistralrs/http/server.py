"""Serving the WSGI app with waitress (pure Python, on every platform the backends run on)."""

from __future__ import annotations

import waitress
from waitress.server import BaseWSGIServer

# Each request holds a waitress thread while its sequences run or wait, so the pool must hold every
# request the scheduler may take (running plus waiting) and a few more for /health and /metrics:
# with fewer threads, waitress would queue the excess silently instead of the scheduler answering 503.
SPARE_THREADS = 4
THREADS = 8


def threads_for(max_seqs: int, max_waiting: int | None) -> int:
    waiting = 2 * max_seqs if max_waiting is None else max_waiting
    return max_seqs + waiting + SPARE_THREADS


def create_server(app, host: str, port: int, threads: int = THREADS) -> BaseWSGIServer:
    """A bound (not yet running) server; port 0 picks a free port, read back from `.effective_port`.

    Streaming relies on waitress's default `send_bytes=1` (deprecated as a setting, so not
    passed): every write the app yields is flushed to the socket at once, so each SSE chunk
    leaves when it is produced. Nothing here may raise it.

    channel_request_lookahead keeps reading each connection while its request runs, which is
    how waitress notices a client that hung up (`waitress.client_disconnected` in the environ):
    a non-streaming request is then cancelled instead of generating for nobody.
    """
    return waitress.create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        channel_request_lookahead=1,
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
