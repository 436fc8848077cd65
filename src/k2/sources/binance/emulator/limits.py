"""Binance spot limits the emulator enforces, with the doc rule behind each default; every timing scales for tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """Connection and request limits. Defaults are production Binance spot values."""

    # web-socket-streams "WebSocket Limits": "WebSocket connections have a limit of 5 incoming messages per
    # second. A message is considered: a PING frame, a PONG frame, a JSON controlled message" - over it, disconnect.
    incoming_per_second: int = 5
    # web-socket-streams: "A single connection can listen to a maximum of 1024 streams."
    max_streams: int = 1024
    # web-socket-streams: "The WebSocket server will send a ping frame every 20 seconds."
    ping_interval: float = 20.0
    # web-socket-streams: "If the WebSocket server does not receive a pong frame back from the connection within
    # a minute the connection will be disconnected."
    pong_timeout: float = 60.0
    # web-socket-streams: "A single connection to stream.binance.com is only valid for 24 hours".
    max_lifetime: float = 24 * 3600.0
    # rest-api "LIMITS": REQUEST_WEIGHT 6000 per 1 MINUTE (exchangeInfo.rateLimits; it was 1200 in 2021).
    rest_weight_limit: int = 6000
    # The REQUEST_WEIGHT interval (1 MINUTE); X-MBX-USED-WEIGHT-1M keeps its name when this is scaled.
    rest_window: float = 60.0
    # Binance drops consumers that cannot keep up; frames queued for one connection before it is cut.
    send_queue_max: int = 100_000

    @classmethod
    def scaled(cls, factor: float, **overrides: float | int) -> Limits:
        """Every timing multiplied by ``factor`` (e.g. 0.01 turns the 20 s ping into 0.2 s); counts unchanged."""
        base = cls()
        values: dict[str, float | int] = {
            "ping_interval": base.ping_interval * factor,
            "pong_timeout": base.pong_timeout * factor,
            "max_lifetime": base.max_lifetime * factor,
            "rest_window": base.rest_window * factor,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
