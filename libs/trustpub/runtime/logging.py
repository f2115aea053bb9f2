"""structlog configured for JSON lines on stdout, context carried in contextvars."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog


def configure(service: str, *, level: str = "info", fmt: str = "json") -> None:
    """Route structlog (and stdlib logging) to stdout, one event per line."""
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.dict_tracebacks if fmt == "json" else structlog.processors.format_exc_info,
    ]
    if fmt == "console":
        renderer: structlog.typing.Processor = structlog.dev.ConsoleRenderer(colors=False)
        factory: structlog.typing.WrappedLogger = structlog.PrintLoggerFactory(sys.stdout)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory = structlog.BytesLoggerFactory(sys.stdout.buffer)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=sys.stderr)
