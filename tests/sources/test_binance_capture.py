"""The cryptofeed capture reader, on the real recorded Binance sessions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from k2.samples import BINANCE_CAPTURE_2021_04_04 as CAPTURE_2021_04
from k2.samples import BINANCE_CAPTURE_2021_10_12 as CAPTURE_2021_10
from k2.samples import BINANCE_DEPTH_SNAPSHOTS_2021_10_12 as HTTP_2021_10
from k2.sources.binance.capture import (
    BadLine,
    CaptureConfig,
    CaptureFormatError,
    RestResponse,
    WsConnect,
    WsFrame,
    WsSent,
    micros_from_text,
    read_capture,
    rest_responses,
    ws_frames,
)


def test_capture_holds_one_connection_then_frames_and_rest_bodies_in_receipt_order() -> None:
    entries = list(read_capture(CAPTURE_2021_04))
    kinds = Counter(type(e).__name__ for e in entries)
    assert kinds == {"WsFrame": 4716, "RestResponse": 3, "WsConnect": 1}
    assert isinstance(entries[0], WsConnect)
    assert entries[0].url.startswith("wss://stream.binance.com:9443/stream?streams=dotusdt@depth@100ms/")
    assert entries[0].connect_us == 1617566590378895
    receipts = [e.receipt_us for e in entries[1:] if isinstance(e, WsFrame | RestResponse)]
    assert receipts == sorted(receipts)


def test_stream_mix_matches_the_recorded_session() -> None:
    streams = Counter(orjson.loads(f.raw)["stream"].partition("@")[2] for f in ws_frames(CAPTURE_2021_04))
    assert streams == {"depth@100ms": 2688, "aggTrade": 1910, "kline_1m": 118}
    streams = Counter(orjson.loads(f.raw)["stream"].partition("@")[2] for f in ws_frames(CAPTURE_2021_10))
    assert streams == {"depth@100ms": 177, "bookTicker": 84, "aggTrade": 2, "kline_1m": 2}


def test_frames_keep_the_exact_bytes_binance_sent() -> None:
    first = next(ws_frames(CAPTURE_2021_04))
    line = CAPTURE_2021_04.read_bytes().split(b"\n")[1]
    assert line == b"1617566591.326123: " + first.raw
    assert first.receipt_us == 1617566591326123
    assert first.line_no == 2


def test_receipt_times_are_exact_microseconds_from_the_text() -> None:
    # Line 3 of the 2021-10-12 capture is stamped 1633998512.0633569: the 7th digit is dropped, no float rounding.
    frames = list(ws_frames(CAPTURE_2021_10))
    assert frames[0].receipt_us == 1633998512063356
    assert micros_from_text("1617566592.1065369") == 1617566592106536
    assert micros_from_text(b"1617566592") == 1617566592000000
    assert micros_from_text("1617566592.5") == 1617566592500000
    with pytest.raises(ValueError):
        micros_from_text("1.6e9")


def test_rest_responses_keep_url_and_body() -> None:
    responses = list(rest_responses(CAPTURE_2021_04))
    assert [r.params["symbol"] for r in responses] == ["DOTUSDT", "BTCUSDT", "ETHUSDT"]
    assert {r.path for r in responses} == {"/api/v1/depth"}
    btc = responses[1]
    assert orjson.loads(btc.body)["lastUpdateId"] == 9893033066
    assert btc.params["limit"] == "1000"


def test_http_only_capture_reads_without_a_connection_line() -> None:
    responses = list(read_capture(HTTP_2021_10))
    assert all(isinstance(r, RestResponse) for r in responses)
    snapshots = {r.params["symbol"]: orjson.loads(r.body)["lastUpdateId"] for r in responses}  # type: ignore[union-attr]
    assert len(snapshots) == 4
    assert snapshots["NKNUSDT"] == 499869752


def test_a_line_of_no_known_kind_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.0"
    path.write_bytes(b'1617566591.326123: {"a":1}\n\nnot a capture line\n')
    with pytest.raises(CaptureFormatError, match=r"bad\.0: line 3"):
        list(read_capture(path))


NEWER_CAPTURE = (
    b"configuration: {'log': {'filename': 'feedhandler.log', 'level': 'WARNING'}, 'uvloop': True}\n"
    b"wss://stream.binance.com:9443/stream <-> 1700000000.123456\n"
    b"wss://stream.binance.com:9443/stream <- 1700000000.2: "
    b'{"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 1}\n'
    b'1700000000.5: {"result":null,"id":1}\n'
)


def test_newer_captures_open_with_their_configuration_and_the_subscriptions_sent(tmp_path: Path) -> None:
    path = tmp_path / "BINANCE.ws.7.0"
    path.write_bytes(NEWER_CAPTURE)
    config, connect, sent, frame = read_capture(path)
    assert isinstance(config, CaptureConfig)
    assert config.text == "{'log': {'filename': 'feedhandler.log', 'level': 'WARNING'}, 'uvloop': True}"
    assert isinstance(connect, WsConnect) and connect.connect_us == 1_700_000_000_123_456
    assert isinstance(sent, WsSent)
    assert (sent.url, sent.sent_us, sent.line_no) == ("wss://stream.binance.com:9443/stream", 1_700_000_000_200_000, 3)
    assert orjson.loads(sent.raw)["params"] == ["btcusdt@aggTrade"]
    assert isinstance(frame, WsFrame) and frame.raw == b'{"result":null,"id":1}'
    assert list(ws_frames(path)) == [frame]


def test_a_lenient_read_keeps_each_bad_line_with_its_reason_and_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "torn.0"
    path.write_bytes(NEWER_CAPTURE + b'1700000001.0: {"stream":"btcusdt@aggTrade","da\nnot a line\n1700000002.: x\n')
    entries = list(read_capture(path, strict=False))
    bad = [e for e in entries if isinstance(e, BadLine)]
    assert [(b.line_no, b.raw) for b in bad] == [(6, b"not a line"), (7, b"1700000002.: x")]
    assert bad[0].reason.startswith("not '<time>: <frame>'")
    # A torn frame is still a frame line: whether its JSON is whole is for its reader to decide.
    assert [e.line_no for e in entries if isinstance(e, WsFrame)] == [4, 5]
