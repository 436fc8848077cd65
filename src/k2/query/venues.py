"""What bars need to know of each exchange, in one place: the zone its trading day is counted in, and the trade
condition codes it leaves out of a bar by default.

- asx: Australia/Sydney (the session, 10:00-16:00 local, straddles 00:00 UTC, so UTC days would split it). Trades
  with condition code 1, 3 or 9 are left out: in the ASX files these codes, and only these, carry the venue mark
  'X' (data/samples/asx/README.md: column 5 is the qualifier code, column 6 the venue, 'X' or empty) and they are
  prints off the central order book. In the sample, code 1 is the pre-open prints of 11 March 07:05 (40.00 to 42.00
  on a stock trading near 36), code 3 block prints at any hour from 07:57 to after 17:00, code 9 crossings. The
  files do not spell the codes out; this is what the rows themselves show.
- binance: UTC (24/7 crypto; Binance's own daily klines open at 00:00 UTC). No trade is left out (its trades carry
  no condition codes).
- any other exchange: UTC, nothing left out.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Venue:
    zone: str  # IANA zone whose midnight starts the exchange's trading day
    uncounted_conditions: tuple[str, ...] = ()  # trade_conditions codes left out of bars by default


VENUES: dict[str, Venue] = {
    "asx": Venue("Australia/Sydney", ("1", "3", "9")),
    "binance": Venue("UTC"),
}
OTHER_VENUE = Venue("UTC")


def venue(exchange: str) -> Venue:
    """The exchange's entry in VENUES, or OTHER_VENUE (UTC, nothing left out) for one not listed."""
    return VENUES.get(exchange, OTHER_VENUE)
