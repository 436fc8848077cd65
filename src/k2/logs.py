"""Structured logging (structlog) to stderr; JSON when K2_LOG_JSON=1, quiet (warnings) unless asked."""

from __future__ import annotations

import logging
import os
import sys

import structlog


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time of writing, not when logging was configured: a caller that
    swaps stderr for a while (a test runner capturing output) must not leave logging bound to a closed stream."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(verbose: bool = False) -> None:
    level = logging.INFO if verbose or os.environ.get("K2_LOG_LEVEL") == "INFO" else logging.WARNING
    renderer = (
        structlog.processors.JSONRenderer()
        if os.environ.get("K2_LOG_JSON") == "1"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
