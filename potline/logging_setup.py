"""Logging for the daemon: structlog, one JSON object per line (journald-friendly),
human-readable colours when stderr/stdout is a terminal.

* Every event carries ``plant`` (bound once with ``structlog.contextvars``); events about
  a place carry ``line``, ``room`` and ``cell`` (floor number) as fields.
* asyncua and pymodbus log through the stdlib; their loggers are capped at WARNING
  (asyncua's INFO is chatty) and rendered by the same structlog processors
  (``ProcessorFormatter``), so the output stays one JSON object per line.
* ``configure_logging`` is idempotent (tests and the CLI may call it repeatedly).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import structlog

__all__ = ["CHATTY_LOGGERS", "LogFormat", "bind_context", "configure_logging"]

LogFormat = Literal["auto", "json", "console"]

#: third-party stdlib loggers capped at WARNING
CHATTY_LOGGERS = ("asyncua", "pymodbus", "opcua", "numba", "urllib3", "asyncio")


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(
    fmt: LogFormat = "auto",
    level: str | int = "INFO",
    stream: TextIO | None = None,
    third_party_level: str | int = "WARNING",
) -> str:
    """Configure structlog and the stdlib root logger.

    Args:
        fmt: "json" (one object per line), "console" (colours, aligned) or "auto"
            (console when ``stream`` is a terminal, else JSON).
        level: our minimum level.
        stream: where lines go (default stdout, which journald captures).
        third_party_level: cap for asyncua/pymodbus/... stdlib loggers.

    Returns:
        the format actually used ("json" or "console").
    """
    out = stream if stream is not None else sys.stdout
    if fmt == "auto":
        try:
            fmt = "console" if out.isatty() else "json"
        except (AttributeError, ValueError):
            fmt = "json"
    lvl = logging.getLevelName(level.upper()) if isinstance(level, str) else int(level)
    if not isinstance(lvl, int):
        raise ValueError(f"unknown log level {level!r}")
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False, default=str)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_colour_ok(out))
    shared = _shared_processors()
    structlog.reset_defaults()
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.add_logger_name,
            structlog.processors.format_exc_info if fmt == "json" else _noop,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.set_name("potline")
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == "potline" or isinstance(h, logging.StreamHandler):
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(lvl)
    cap = logging.getLevelName(third_party_level.upper()) if isinstance(third_party_level, str) else third_party_level
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(max(int(cap), lvl))
    logging.captureWarnings(True)
    return fmt


def _noop(_logger: Any, _name: str, event_dict: Any) -> Any:
    return event_dict


def _colour_ok(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def bind_context(**fields: Any) -> None:
    """Bind fields (e.g. ``plant=...``) to every later log event of this context."""
    structlog.contextvars.bind_contextvars(**fields)
