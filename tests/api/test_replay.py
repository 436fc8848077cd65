"""Replay sends records in event order, paced by `speed`, and resumes from its trailer cursor without gap or repeat."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from k2.query import market
from k2.query.engine import QueryEngine
from tests.api.conftest import Server

DAY0 = {"start": "2024-03-04T00:00:00Z", "end": "2024-03-05T00:00:00Z"}


def replay_lines(client: httpx.Client, **params: object) -> tuple[list[dict], dict]:
    with client.stream("GET", "/v1/replay", params=params) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [orjson.loads(line) for line in response.iter_lines() if line]
    *records, trailer = lines
    return records, trailer["end_of_replay"]


def test_ndjson_replay_is_in_event_order(client: httpx.Client, engine: QueryEngine) -> None:
    records, trailer = replay_lines(client, kind="trades", **DAY0)
    expected = market.trades(engine, None, datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 5, tzinfo=UTC))
    assert [r["message_id"] for r in records] == expected.column("message_id").to_pylist()
    assert trailer["records"] == len(records)
    assert isinstance(trailer["snapshot_id"], int)
    assert records[0]["price"] == "36.66700000"


def test_resume_from_the_cursor_continues_without_gap_or_repeat(client: httpx.Client) -> None:
    everything, _ = replay_lines(client, kind="quotes", symbols="BHP,CBA")
    # BHP and CBA quote in the same microseconds: end the first part between two such pairs (8 rows, 2 batches).
    first, trailer = replay_lines(client, kind="quotes", symbols="BHP,CBA", end=everything[8]["timestamp"])
    assert first == everything[:8]
    rest, final = replay_lines(client, kind="quotes", symbols="BHP,CBA", cursor=trailer["cursor"])
    assert first + rest == everything
    assert final["snapshot_id"] == trailer["snapshot_id"]
    done, last = replay_lines(client, kind="quotes", symbols="BHP,CBA", cursor=final["cursor"])
    assert done == []
    assert last["cursor"] == final["cursor"]


def test_a_client_may_stop_reading_mid_stream(client: httpx.Client) -> None:
    with client.stream("GET", "/v1/replay", params={"kind": "trades"}) as response:
        lines = response.iter_lines()
        assert "message_id" in orjson.loads(next(lines))
    assert client.get("/v1/stats").status_code == 200


def test_speed_paces_by_event_time(client: httpx.Client) -> None:
    # BHP's day-0 trades span 09:59:00 to 10:19:..., about 1250 s: at 2500x that is about half a second.
    began = time.monotonic()
    records, _ = replay_lines(client, symbols="BHP", speed=2500, **DAY0)
    elapsed = time.monotonic() - began
    assert len(records) == 21
    assert 0.4 < elapsed < 5


def test_websocket_replay_matches_ndjson(server: Server, client: httpx.Client, api_key: str) -> None:
    expected, expected_trailer = replay_lines(client, kind="trades", symbols="RIO", **DAY0)
    url = server.url.replace("http", "ws") + "/v1/replay/ws?kind=trades&symbols=RIO"
    url += "&start=2024-03-04T00:00:00Z&end=2024-03-05T00:00:00Z"
    with connect(url, additional_headers={"X-API-Key": api_key}) as ws:
        messages = [orjson.loads(message) for message in ws]
    *records, trailer = messages
    assert records == expected
    assert trailer["end_of_replay"] == expected_trailer


@pytest.mark.parametrize(
    ("query", "headers", "code"),
    [("", {}, 4401), ("&kind=bogus", None, 4400), ("&start=yesterday", None, 4400), ("&speed=fast", None, 4400)],
)
def test_websocket_errors_send_the_envelope_then_close(
    server: Server, api_key: str, query: str, headers: dict | None, code: int
) -> None:
    url = server.url.replace("http", "ws") + "/v1/replay/ws?symbols=BHP" + query
    with connect(url, additional_headers={"X-API-Key": api_key} if headers is None else headers) as ws:
        error = orjson.loads(ws.recv())["error"]
        assert error["message"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == code


def test_replay_bad_arguments_answer_before_streaming(client: httpx.Client) -> None:
    assert client.get("/v1/replay", params={"kind": "bars"}).status_code == 422
    assert client.get("/v1/replay", params={"cursor": "garbage"}).status_code == 400
    assert client.get("/v1/replay", params={"as_of": "42"}).status_code == 404
