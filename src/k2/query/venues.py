"""What bars need to know of each exchange, in one place: the zone its trading day is counted in, and the trade
condition codes it leaves out of a bar by default.

- asx: Australia/Sydney (the session, 10:00-16:00 local, straddles 00:00 UTC, so UTC days would split it). Trades
  with condition code 1, 3 or 9 are left out. data/samples/asx/README.md describes the columns (5: qualifier code,
  6: venue, 'X' or empty) but the files name no code; the rows show that these codes, and only these, carry the
  venue mark 'X', and that they are not continuous trading on the book: code 1 is the pre-open prints of 11 March
  07:05 (40.00 to 42.00 on a stock trading near 36), code 3 large prints from 07:57 to after 17:00 (many outside
  the session), code 9 prints marked 'X' inside the session. K2 reads 'X' as off-book and leaves these prints out,
  so a stray one (the 42.00) does not set a bar's high; exclude_conditions=() counts them.
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
