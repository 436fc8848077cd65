"""The one way tests wait: poll a condition until it holds, never sleep a guessed time and then assert."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.1,
    check: Callable[[], None] | None = None,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll `condition` until it returns something truthy, and return that.

    `check` runs before each poll and raises to fail at once (a process that died will never make the condition
    true); after `timeout` seconds an AssertionError names `what`, followed by `detail()` when given (a log tail).
    """
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout}s waiting for {what}"
            raise AssertionError(f"{message}\n{detail()}" if detail is not None else message)
        time.sleep(interval)
