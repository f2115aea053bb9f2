"""structlog configured for JSON lines on stdout, context carried in contextvars."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

from trustpub.runtime.bus import redact


def _redact_urls(_: object, __: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """No log line carries a URL's password (a NATS or database URL with credentials)."""
    for key, value in event.items():
        if isinstance(value, str) and "@" in value:
            event[key] = redact(value)
    return event


def configure(service: str, *, level: str = "info", fmt: str = "json") -> None:
    """Route structlog (and stdlib logging) to stdout, one event per line."""
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.dict_tracebacks if fmt == "json" else structlog.processors.format_exc_info,
        _redact_urls,
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
    logging.getLogger("asyncio").addFilter(_quiet_tls_close)


def _quiet_tls_close(record: logging.LogRecord) -> bool:
    # asyncio says this each time a TLS connection to NATS closes (nats-py's protocol returns
    # True from eof_received); it is no fault of ours and no use to an operator.
    return "eof_received()" not in record.getMessage()
