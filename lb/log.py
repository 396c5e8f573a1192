"""Structured logs: one JSON object per line on stderr, filtered by level."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class JsonLogger:
    """Writes ``{"ts", "level", "event", ...fields}`` lines; one ``write`` call per line.

    Lines shorter than PIPE_BUF reach a shared pipe whole, so the processes of one forwarder
    can share stderr.
    """

    __slots__ = ("_threshold", "_stream", "_context")

    def __init__(self, level: str = "info", stream: TextIO | None = None, **context: Any) -> None:
        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}")
        self._threshold = LEVELS[level]
        self._stream = stream
        self._context = context

    def bind(self, level: str | None = None, **context: Any) -> JsonLogger:
        """Return a logger with more context fields (and maybe another level)."""
        name = level or next(k for k, v in LEVELS.items() if v == self._threshold)
        return JsonLogger(name, self._stream, **{**self._context, **context})

    def enabled(self, level: str) -> bool:
        """Whether lines of ``level`` are written."""
        return LEVELS[level] >= self._threshold

    def log(self, level: str, event: str, **fields: Any) -> None:
        """Write one line for ``event`` at ``level`` with ``fields``."""
        if LEVELS[level] < self._threshold:
            return
        record = {
            "ts": round(time.time(), 6),
            "level": level,
            "event": event,
            **self._context,
            **fields,
        }
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            stream.write(json.dumps(record, default=str, separators=(",", ":")) + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full stderr must never stop forwarding

    def debug(self, event: str, **fields: Any) -> None:
        """Log at debug level."""
        self.log("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        """Log at info level."""
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Log at warning level."""
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        """Log at error level."""
        self.log("error", event, **fields)
