"""A faithful local Binance spot market-data venue (WebSocket streams + REST) for tests and demos.

Live Binance is unreachable from K2's environments; this emulator replays real captures (or a synthetic market) with
Binance's URL scheme, request/response envelopes, limits, keepalive and lifetime rules, and injects faults on demand.
"""

from k2.sources.binance.capture import ReplayClock
from k2.sources.binance.emulator.faults import ConnectionFault, FaultSpec, FrameFault
from k2.sources.binance.emulator.limits import Limits
from k2.sources.binance.emulator.server import BinanceEmulator, Endpoints, main
from k2.sources.binance.emulator.synthetic import SyntheticSpec

__all__ = [
    "BinanceEmulator",
    "ConnectionFault",
    "Endpoints",
    "FaultSpec",
    "FrameFault",
    "Limits",
    "ReplayClock",
    "SyntheticSpec",
    "main",
]
