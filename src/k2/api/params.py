"""Query parameters shared by the routes, typed once so OpenAPI documents them the same everywhere, and the API's
page cursor (the library's keyset cursor plus the snapshot the first page read).
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from typing import Annotated

import orjson
from fastapi import Query
from pydantic import AfterValidator, AwareDatetime

from k2.api.errors import ApiError
from k2.api.formats import Format
from k2.api.settings import MAX_PAGE_ROWS
from k2.query.filters import InvalidQueryError
from k2.query.timetravel import AsOf

MAX_SYMBOLS = 500
_SNAPSHOT_ID = re.compile(r"-?[0-9]{1,19}")


def _in_utc_range(moment: datetime) -> datetime:
    """The instant in UTC; an offset that pushes it outside years 1-9999 fails validation instead of overflowing."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("the instant falls outside years 1-9999 once converted to UTC") from None


Instant = Annotated[AwareDatetime, AfterValidator(_in_utc_range)]
Start = Annotated[
    Instant | None,
    Query(description="Inclusive lower bound on event time, ISO-8601 with a zone, e.g. 2024-03-04T00:00:00Z"),
]
End = Annotated[Instant | None, Query(description="Exclusive upper bound on event time, ISO-8601 with a zone")]
Exchange = Annotated[
    str | None, Query(min_length=1, max_length=64, description="Venue code, lower case, e.g. asx, binance")
]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_ROWS, description="Rows per page")]
CursorParam = Annotated[
    str | None,
    Query(max_length=2048, description="`next_cursor` of the previous page, unchanged; omit for the first page"),
]
FreshParam = Annotated[
    bool,
    Query(
        description="Also return what Kafka holds that the sink has not committed to the lake yet, merged (each"
        " message_id once) in event order. One page: not with `cursor` or `as_of`. Header X-K2-Fresh-Caught-Up"
        " says whether the whole tail was read within the time budget.",
    ),
]
AsOfParam = Annotated[
    str | None,
    Query(
        max_length=64,
        description="Read the lake as it was: a snapshot id (from /v1/snapshots or a `snapshot_id` field) or an"
        " ISO-8601 instant with a zone. Omit for the newest data.",
    ),
]
FormatParam = Annotated[
    Format | None,
    Query(
        alias="format",
        description="Response format; overrides Accept (text/csv, application/vnd.apache.parquet,"
        " application/vnd.apache.arrow.stream, application/x-ndjson; JSON otherwise)",
    ),
]
Tz = Annotated[
    str, Query(max_length=64, description="IANA zone whose midnight bars and days start at, e.g. Australia/Sydney")
]
_SymbolList = Annotated[
    list[str] | None,
    Query(description="Symbols, comma-separated and/or repeated (symbols=BHP,CBA&symbols=RIO); omit for all"),
]


def symbols_param(symbols: _SymbolList = None, symbol: _SymbolList = None) -> list[str] | None:
    """`symbols` and its alias `symbol`, split on commas; None (every symbol) when neither is given."""
    given = [*(symbols or []), *(symbol or [])]
    if not given:
        return None
    names = list(dict.fromkeys(s.strip() for text in given for s in text.split(",") if s.strip()))
    if not names:
        raise ApiError(400, "symbols is empty: name at least one symbol (e.g. symbols=BHP) or omit it for all")
    if len(names) > MAX_SYMBOLS or any(len(name) > 64 for name in names):
        raise ApiError(400, f"at most {MAX_SYMBOLS} symbols of up to 64 characters each: split the request")
    return names


def parse_instant(text: str, name: str) -> datetime:
    """ISO-8601 text with a zone as a UTC datetime; InvalidQueryError (400) saying the accepted form otherwise."""
    try:
        moment = datetime.fromisoformat(text.strip())
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError("no zone")
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidQueryError(
            f"{name}={text!r} is not an ISO-8601 instant with a zone: pass e.g. 2024-03-04T10:00:00Z"
        ) from None


def parse_as_of(text: str | None) -> AsOf:
    """A snapshot id (integer text) or an aware datetime; 400 with the accepted forms otherwise."""
    if text is None or not text.strip():
        return None
    if _SNAPSHOT_ID.fullmatch(text.strip()):
        return int(text)
    try:
        return parse_instant(text, "as_of")
    except InvalidQueryError:
        raise InvalidQueryError(
            f"as_of={text!r} is neither a snapshot id nor an ISO-8601 instant with a zone:"
            " pass e.g. as_of=2024-03-04T10:00:00Z or a snapshot_id from /v1/snapshots"
        ) from None


def encode_cursor(snapshot_id: int | None, position: str) -> str:
    """An opaque page cursor: the keyset position and the snapshot the paging reads."""
    raw = orjson.dumps([snapshot_id, position])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str | None) -> tuple[int | None, str | None]:
    """(snapshot id, library cursor) from an `encode_cursor` text; (None, None) for no cursor; 400 if mangled."""
    if text is None:
        return None, None
    try:
        snapshot_id, position = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, TypeError):
        snapshot_id, position = "invalid", None
    if not (snapshot_id is None or type(snapshot_id) is int) or not isinstance(position, str):
        raise ApiError(400, "cursor is not one this API issued: pass back next_cursor unchanged", code="invalid_query")
    return snapshot_id, position


def paging_as_of(as_of: AsOf, cursor_snapshot: int | None) -> AsOf:
    """Pages read the snapshot the first page read (held in the cursor), unless `as_of` names one explicitly."""
    return as_of if as_of is not None else cursor_snapshot
