"""Structured logging (structlog) to stderr; JSON when K2_LOG_JSON=1, quiet (warnings) unless asked (K2_LOG_LEVEL)."""

from __future__ import annotations

import logging
import sys

import structlog

from k2.config import LogSettings


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time of writing, not when logging was configured: a caller that
    swaps stderr for a while (a test runner capturing output) must not leave logging bound to a closed stream."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(verbose: bool = False, settings: LogSettings | None = None) -> None:
    """`verbose` (a command's -v) lowers the level to INFO; otherwise `settings` (default: K2_LOG_*) decide."""
    options = settings or LogSettings()
    level = min(logging.INFO, logging.getLevelName(options.level)) if verbose else logging.getLevelName(options.level)
    renderer = (
        structlog.processors.JSONRenderer()
        if options.json_lines
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
