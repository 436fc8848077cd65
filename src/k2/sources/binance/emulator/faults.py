"""Faults the emulator can inject: what real Binance connections suffer, reproducible on demand.

Frame faults (drop, duplicate, reorder, malformed) are decided once per published frame, so every subscriber of a
stream sees the same damage, as when the venue's gateway misbehaves. A dropped or malformed frame is still recorded in
the REST store: a client that notices the gap can fill it with ``/api/v3/aggTrades?fromId=``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields, replace
from enum import StrEnum

from k2.core.errors import UserError


class FrameFault(StrEnum):
    """What happens to one published frame on its way to the sockets."""

    NONE = "none"
    DROP = "drop"
    DUPLICATE = "duplicate"
    REORDER = "reorder"  # held back and sent after the next frame of the same stream
    MALFORMED = "malformed"  # the frame is cut in half: invalid JSON on the wire


class ConnectionFault(StrEnum):
    """Faults that act on connections rather than frames."""

    DISCONNECT = "disconnect"  # abrupt TCP drop of every client, no close frame
    STALL = "stall"  # stop writing to the connection(s) for ``seconds``; frames queue and then burst
    SHUTDOWN = "shutdown"  # send the serverShutdown event, then close


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """Faults active from start-up. Probabilities apply per frame; periods are seconds (0 = off)."""

    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    reorder_probability: float = 0.0
    malformed_probability: float = 0.0
    disconnect_every: float = 0.0
    stall_every: float = 0.0
    stall_seconds: float = 0.0
    shutdown_after: float = 0.0
    seed: int = 0
    # Only frames of these stream kinds are damaged; empty means every stream. A kind is what follows the symbol
    # ("aggTrade", "depth@100ms") or its first part ("depth": both diff depth streams).
    stream_kinds: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """`k2 emulate binance --faults` text: comma-separated name=value, names as the fields with `-` for `_`
        and without `_probability` (e.g. "drop=0.01,duplicate=0.005,disconnect-every=30,seed=7,streams=aggTrade";
        `streams` takes `+`-separated kinds). UserError naming the accepted names otherwise."""
        names = {f.name.removesuffix("_probability").replace("_", "-"): f.name for f in fields(cls)}
        names["streams"] = names.pop("stream-kinds")
        spec = cls()
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = item.partition("=")
            field = names.get(name.strip())
            if field is None or not value.strip():
                raise UserError(f"--faults: {item!r} is not name=value with a name among {', '.join(names)}")
            spec = replace(spec, **{field: _fault_value(field, value.strip(), item)})
        return spec

    def describe(self) -> str:
        """The active faults, as `parse` reads them ("none" when there are none)."""
        default = FaultSpec()
        active = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                name = "streams" if f.name == "stream_kinds" else f.name.removesuffix("_probability").replace("_", "-")
                active.append(f"{name}={'+'.join(value) if f.name == 'stream_kinds' else value}")
        return ",".join(active) or "none"


def _fault_value(field: str, value: str, item: str) -> float | int | tuple[str, ...]:
    if field == "stream_kinds":
        return tuple(kind for kind in value.split("+") if kind)
    try:
        number = int(value) if field == "seed" else float(value)
    except ValueError:
        raise UserError(f"--faults: {item!r}: {value!r} is not a number") from None
    if field.endswith("_probability") and not 0.0 <= number <= 1.0:
        raise UserError(f"--faults: {item!r}: a probability is between 0 and 1")
    if number < 0:
        raise UserError(f"--faults: {item!r}: seconds are 0 (off) or more")
    return number


def _of_kinds(stream: str, kinds: tuple[str, ...]) -> bool:
    """`btcusdt@depth@100ms` is of the kinds "depth@100ms" and "depth"; `btcusdt@aggTrade` of "aggTrade"."""
    kind = stream.partition("@")[2]
    return kind in kinds or kind.partition("@")[0] in kinds


@dataclass(slots=True)
class _Pending:
    fault: FrameFault
    stream: str | None
    remaining: int


class FaultPlan:
    """Runtime fault state: the spec's probabilities plus one-shot faults queued by ``inject``."""

    def __init__(self, spec: FaultSpec) -> None:
        self.spec = spec
        self._random = random.Random(spec.seed)
        self._pending: list[_Pending] = []

    def queue(self, fault: FrameFault, stream: str | None, count: int) -> None:
        """Damage the next ``count`` frames (of ``stream``, or of any stream when None)."""
        self._pending.append(_Pending(fault, stream, count))

    def decide(self, stream: str) -> FrameFault:
        """The fault for the next frame of ``stream``; one-shot faults first, then the spec's probabilities."""
        for entry in self._pending:
            if entry.stream is None or entry.stream == stream:
                entry.remaining -= 1
                if entry.remaining <= 0:
                    self._pending.remove(entry)
                return entry.fault
        spec = self.spec
        if spec.stream_kinds and not _of_kinds(stream, spec.stream_kinds):
            return FrameFault.NONE
        roll = self._random.random()
        for fault, probability in (
            (FrameFault.DROP, spec.drop_probability),
            (FrameFault.DUPLICATE, spec.duplicate_probability),
            (FrameFault.REORDER, spec.reorder_probability),
            (FrameFault.MALFORMED, spec.malformed_probability),
        ):
            if roll < probability:
                return fault
            roll -= probability
        return FrameFault.NONE
