"""-l/--log: append every request and response as one JSON line each."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mistralrs.errors import UserError


class RequestLog:
    """A JSON-lines file opened for appending; with no path every call does nothing.

    Each line is flushed as it is written, so an interrupted session loses nothing.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self._file = None
        self._lock = threading.Lock()  # the server writes from many request threads
        if path is not None:
            try:
                self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held for the session
            except OSError as exc:
                raise UserError(f"-l/--log {path}: cannot open the log file for appending ({exc.strerror}).") from None

    def request(self, **fields: Any) -> None:
        self._write("request", fields)

    def response(self, **fields: Any) -> None:
        self._write("response", fields)

    def _write(self, kind: str, fields: dict) -> None:
        if self._file is None:
            return
        record = {"time": datetime.now(timezone.utc).isoformat(), "type": kind, **fields}
        line = json.dumps(record, ensure_ascii=False, default=_plain) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _plain(value: Any) -> Any:
    # SamplingParams, Usage and Timing are dataclasses: log their fields.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)
