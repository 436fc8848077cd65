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
from fastapi import Query, Request
from pydantic import AfterValidator, AwareDatetime, BeforeValidator, StringConstraints

from k2.api.errors import ApiError
from k2.api.formats import Format
from k2.api.settings import MAX_PAGE_ROWS
from k2.query.filters import InvalidQueryError
from k2.query.timetravel import AsOf

MAX_SYMBOLS = 500
_SNAPSHOT_ID = re.compile(r"-?[0-9]{1,19}")
# One symbol: 1-64 characters, no comma, not starting or ending with a space (spaces around it are dropped).
_NAME = r" *[^, ](?:[^,]{0,62}[^, ])? *"
# A `symbols` value: one or more names separated by commas. OpenAPI states it, FastAPI enforces it (422).
SYMBOLS_PATTERN = rf"^{_NAME}(?:,{_NAME})*$"
SYMBOL_PATTERN = rf"^{_NAME}$"  # exactly one name
_SYMBOLS = re.compile(SYMBOLS_PATTERN)
AS_OF_PATTERN = (
    r"^(?:-?[0-9]{1,19}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?"
    r"(?:[Zz]|[+-][0-9]{2}:?[0-9]{2}))$"
)
CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"
# The only query parameters that may repeat (lists of names); any other given twice is refused rather than one copy
# ignored.
MULTI_VALUED = frozenset({"symbols", "symbol", "exclude_conditions", "exclude_venues"})
_DATE_START = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ]")


def _in_utc_range(moment: datetime) -> datetime:
    """The instant in UTC; an offset that pushes it outside years 1-9999 fails validation instead of overflowing."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("the instant falls outside years 1-9999 once converted to UTC") from None


def _date_text(value: object) -> object:
    """Instants are ISO-8601 text: pydantic would also read a bare number as seconds since 1970."""
    if isinstance(value, str) and not _DATE_START.match(value):
        raise ValueError("expected an ISO-8601 instant with a zone, e.g. 2024-03-04T10:00:00Z")
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(_date_text), AfterValidator(_in_utc_range)]
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
    Query(
        max_length=2048,
        pattern=CURSOR_PATTERN,
        description="`next_cursor` of the previous page, unchanged; omit for the first page",
    ),
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
        pattern=AS_OF_PATTERN,
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
# A list parameter's values: each one or more names of 1-64 characters, comma-separated (SYMBOLS_PATTERN).
NameList = list[Annotated[str, StringConstraints(pattern=SYMBOLS_PATTERN)]] | None
_SymbolList = Annotated[
    NameList,
    Query(
        description="Symbols, comma-separated and/or repeated (symbols=BHP,CBA&symbols=RIO), each 1 to 64"
        " characters; omit for all"
    ),
]
SYMBOLS_HINT = "name 1 to 64 characters per symbol, comma-separated, e.g. symbols=BHP,CBA; omit it for all"
# What to pass instead, for the 422 of a parameter whose documented pattern a value does not match.
PATTERN_HINTS = {
    "symbols": SYMBOLS_HINT,
    "symbol": f"{SYMBOLS_HINT} (the order-book routes take exactly one symbol)",
    "as_of": "pass a snapshot id from /v1/snapshots or an ISO-8601 instant with a zone, e.g. 2024-03-04T10:00:00Z",
    "cursor": "pass the next_cursor of the previous page unchanged",
    "interval": "pass a number and s/m/h/d, e.g. 1s, 1m, 15m, 1h, 1d",
    "every": "pass a number and s/m/h/d, e.g. 1s, 1m, 15m, 1h, 1d",
    "exclude_conditions": "give codes separated by commas, e.g. 1,3,9, or none to leave nothing out",
    "exclude_venues": "give venue marks separated by commas, e.g. X",
}


def symbols_param(symbols: _SymbolList = None, symbol: _SymbolList = None) -> list[str] | None:
    """`symbols` and its alias `symbol`, split on commas; None (every symbol) when neither is given."""
    given = [*(symbols or []), *(symbol or [])]
    if not given:
        return None
    if not all(_SYMBOLS.fullmatch(text) for text in given):  # FastAPI checked already; the WebSocket did not
        raise InvalidQueryError(f"symbols is not a list of names: {SYMBOLS_HINT}")
    names = list(dict.fromkeys(name.strip(" ") for text in given for name in text.split(",")))
    if len(names) > MAX_SYMBOLS:
        raise ApiError(400, f"at most {MAX_SYMBOLS} symbols per request: split the request", code="invalid_query")
    return names


def single_valued(request: Request) -> None:
    """Refuse a query parameter given more than once (only the lists of MULTI_VALUED may repeat): 422 naming it."""
    params = request.query_params
    repeated = sorted({name for name in params if name not in MULTI_VALUED and len(params.getlist(name)) > 1})
    if repeated:
        raise ApiError(
            422,
            f"{', '.join(repeated)} given more than once: pass each parameter once (only"
            f" {', '.join(sorted(MULTI_VALUED))} may repeat)",
            details=[{"loc": ["query", name], "msg": "repeated", "type": "repeated_parameter"} for name in repeated],
        )


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
