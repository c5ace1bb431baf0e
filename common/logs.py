"""The one logging configuration every Quarry process uses (CLI, server workers): plain text for people,
or JSON lines for log pipelines (`log_format = "json"`, env QUARRY_LOG_FORMAT=json, `--log-format json`).

JSON lines carry `time`, `level`, `name`, `event` (the message) and whatever structured fields the call
site passes in `extra` — the access log adds `method`, `code`, `latency_ms`, `collection`, `request_id`."""

from __future__ import annotations

import logging
import sys
from typing import Literal

LogFormat = Literal["text", "json"]
TEXT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
_configured: LogFormat = "text"


def formatter(fmt: LogFormat) -> logging.Formatter:
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter(
            "{asctime}{levelname}{name}{process}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "message": "event", "process": "pid"},
        )
    if fmt == "text":
        return logging.Formatter(TEXT)
    raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")


def configure_logging(level: str = "INFO", fmt: LogFormat = "text", *, force: bool = False) -> None:
    """Log to stderr in `fmt`. Handlers someone else installed (a test runner, an embedding application)
    are left alone unless `force`; a previous configuration of ours is replaced."""
    root = logging.getLogger()
    foreign = [h for h in root.handlers if not getattr(h, "quarry", False)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.quarry = True  # type: ignore[attr-defined]
    if force or not foreign:
        for h in root.handlers[:]:
            root.removeHandler(h)
        root.addHandler(handler)
    root.setLevel(level)
    # faiss's loader reports, at INFO on every start, each SIMD build it tried before the one that loads.
    logging.getLogger("faiss.loader").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    global _configured
    _configured = fmt


def current_format() -> LogFormat:
    """The format of the last `configure_logging` (child processes log the way their parent does)."""
    return _configured
