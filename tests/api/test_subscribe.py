"""/v1/subscribe on real parts: the embedded broker and registry, a lake the real sink commits to, uvicorn on
127.0.0.1. History, Kafka tail and live records arrive once each; a cut connection resumes from its cursor; a slow
live subscriber is closed with 4008 and its cursor; keys and the per-key cap are enforced."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx
import orjson
import pyarrow as pa
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

import k2
from k2.api import ApiSettings, create_app, create_key
from k2.api.state import ApiState
from k2.api.subscribe import Frame, FrameBuffer, SharedLines, frame_text
from k2.bus.registry_client import RegistryClient
from k2.bus.stack import Stack
from k2.client import K2APIError
from k2.config import Settings
from k2.core.metrics import REGISTRY
from tests.api.conftest import FAST, Server
from tests.integration.helpers import make_trade
from tests.query.live_stack import Live
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

SINCE = "2014-03-10T00:00:00Z"  # make_trade(n) is at this day + n ms


@dataclass
class Subscribed:
    live: Live
    server: Server
    state: ApiState
    key: str

    def connect(
        self, sock: socket.socket | None = None, compression: str | None = "deflate", **params: str
    ) -> ClientConnection:
        url = self.server.url.replace("http", "ws") + "/v1/subscribe?" + urlencode(params)
        return connect(url, additional_headers={"X-API-Key": self.key}, sock=sock, max_queue=4, compression=compression)


@contextlib.contextmanager
def serve(settings: Settings, api: ApiSettings) -> Iterator[Subscribed]:
    stack = Stack(settings)
    with stack as endpoints, RegistryClient(endpoints.registry_url) as registry:
        live = Live(stack, endpoints, settings, registry)
        app = create_app(settings, api=api)
        with Server(app) as server:
            yield Subscribed(live, server, app.state.k2, create_key(settings, "tests"))


@pytest.fixture
def subscribed(settings: Settings) -> Iterator[Subscribed]:
    with serve(settings, FAST.model_copy(update={"replay_batch_rows": 7, "subscriptions_per_key": 2})) as running:
        yield running


def ids(numbers: range | list[int]) -> list[str]:
    return [make_trade(n)["message_id"] for n in numbers]


def frames(ws: ClientConnection, timeout: float = 10.0) -> Iterator[tuple[list[dict], dict]]:
    """(records, trailer) per frame; fails when none comes within `timeout` seconds."""
    while True:
        *records, trailer = [orjson.loads(line) for line in str(ws.recv(timeout)).splitlines()]
        yield records, trailer


def read_until(ws: ClientConnection, count: int, *, live: bool = False, timeout: float = 10.0) -> tuple[list[str], str]:
    """message_ids of frames until `count` arrived (with `live`: in a live frame, so nothing older is left); the
    last cursor."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    for records, trailer in frames(ws, timeout):
        got += [r["message_id"] for r in records]
        assert trailer["records"] == len(records)
        if len(got) >= count and (not live or trailer["phase"] == "live"):
            return got, trailer["cursor"]
        assert time.monotonic() < deadline, f"{len(got)} of {count} records arrived"
    raise AssertionError("unreachable")


def _sample(series: str, label: str) -> float:
    """The API's subscription counters: closed by reason, records by phase."""
    name, key = {
        "closed": ("k2_api_subscriptions_closed_total", "reason"),
        "records": ("k2_api_subscription_records_total", "phase"),
    }[series]
    return REGISTRY.get_sample_value(name, {key: label}) or 0.0


def committed_and_tail(live: Live) -> None:
    """Trades 0-19 committed to the lake; 20-29 only in Kafka, after 15-19 again (a producer re-sending)."""
    live.produce([make_trade(n) for n in range(20)])
    live.sink_everything()
    live.produce([make_trade(n) for n in [*range(15, 30)]])


def test_history_tail_then_live_each_once(subscribed: Subscribed) -> None:
    committed_and_tail(subscribed.live)
    with subscribed.connect(kind="trades", symbols="TST", since=SINCE) as ws:
        first, _ = read_until(ws, 30, live=True)
        assert first == ids(range(30))
        subscribed.live.produce([make_trade(n) for n in [25, 3, *range(30, 40)]])  # 25 and 3 again: not resent
        more, _ = read_until(ws, 10)
        assert more == ids(range(30, 40))


def test_a_cut_connection_resumes_from_its_cursor(subscribed: Subscribed) -> None:
    committed_and_tail(subscribed.live)
    with subscribed.connect(kind="trades", symbols="TST", since=SINCE) as ws:
        before, cursor = read_until(ws, 10)  # frames of at most 7 records: mid-history
        ws.socket.shutdown(socket.SHUT_RDWR)  # cut, no close handshake
    subscribed.live.produce([make_trade(n) for n in range(30, 35)])
    with subscribed.connect(kind="trades", symbols="TST", cursor=cursor) as ws:
        after, _ = read_until(ws, 35 - len(before), live=True)
    assert before + after == ids(range(35))


def test_keys_and_the_per_key_cap(subscribed: Subscribed) -> None:
    url = subscribed.server.url.replace("http", "ws") + "/v1/subscribe?kind=trades"
    with connect(url) as anonymous:
        assert orjson.loads(anonymous.recv())["error"]["code"] == "unauthorized"
        with pytest.raises(ConnectionClosed) as closed:
            anonymous.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    with subscribed.connect(kind="trades") as one, subscribed.connect(kind="quotes") as two:
        for ws in (one, two):
            assert next(frames(ws))[1]["phase"] == "live"  # both are running
        with subscribed.connect(kind="trades", symbols="TST") as third:
            error = orjson.loads(third.recv())["error"]
            with pytest.raises(ConnectionClosed) as closed:
                third.recv()
    assert error["code"] == "too_many_subscriptions"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
    with subscribed.connect(kind="trades", since="yesterday") as bad:
        assert "since='yesterday'" in orjson.loads(bad.recv())["error"]["message"]


def test_a_slow_live_subscriber_is_closed_with_its_cursor(settings: Settings) -> None:
    api = FAST.model_copy(update={"replay_batch_rows": 50, "subscribe_buffer_records": 100})
    total = 20_000
    slow_before, live_before = _sample("closed", "slow"), _sample("records", "live")
    with serve(settings, api) as subscribed:
        # A client that stops reading, with a small receive buffer and no compression: the server's sends back up,
        # then its buffer.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", subscribed.server.port))
        with subscribed.connect(sock=sock, compression=None, kind="trades", symbols="TST") as ws:
            assert next(frames(ws))[1]["phase"] == "live"
            subscribed.live.produce([make_trade(n) for n in range(total)])
            wait_until(lambda: not subscribed.state.open_subscriptions, 15, "the server to give up on the subscriber")
            messages = []
            with pytest.raises(ConnectionClosed) as closed:
                for text in ws:  # what was sent before it gave up, then its goodbye
                    messages.append([orjson.loads(line) for line in str(text).splitlines()])
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008
        *sent, (goodbye,) = messages
        received = [r["message_id"] for *records, _trailer in sent for r in records]
        assert received == ids(range(len(received)))  # in order, nothing skipped before the cut
        assert len(received) < total
        cursor = goodbye["error"]["details"]["cursor"]
        assert goodbye["error"]["code"] == "slow_subscriber"
        assert cursor == sent[-1][-1]["cursor"]  # the last frame it was sent
        assert closed.value.rcvd.reason in (cursor, "too slow: resume from the cursor in the last message")
        assert _sample("closed", "slow") - slow_before == 1
        assert _sample("records", "live") - live_before == len(received)
        with subscribed.connect(kind="trades", symbols="TST", cursor=cursor) as ws:
            rest, _ = read_until(ws, total - len(received), timeout=20)
        assert received + rest == ids(range(total))


class Proxy:
    """A TCP relay on 127.0.0.1 in front of `port` whose connections the test can cut (a network drop)."""

    def __init__(self, port: int) -> None:
        self._upstream = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self._upstream))
            self._open += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        for side in (source, target):
            with contextlib.suppress(OSError):
                side.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        for side in self._open:
            with contextlib.suppress(OSError):
                side.shutdown(socket.SHUT_RDWR)
        self._open.clear()

    def close(self) -> None:
        self.cut()
        self._listener.close()


def test_the_python_client_resumes_after_a_drop(subscribed: Subscribed) -> None:
    committed_and_tail(subscribed.live)
    proxy = Proxy(subscribed.server.port)
    got: list[str] = []
    try:
        with k2.Client(proxy.url, api_key=subscribed.key) as client:
            subscription = client.subscribe("trades", ["TST"], since=SINCE, backoff=0.01)
            for record in subscription:
                got.append(record["message_id"])
                if len(got) == 10:
                    proxy.cut()  # mid-history, records of this frame and the next already sent
                if len(got) == 30:
                    subscribed.live.produce([make_trade(n) for n in range(30, 35)])
                if len(got) == 35:
                    break
    finally:
        proxy.close()
    assert got == ids(range(35))
    assert subscription.resumed >= 1
    assert subscription.phase == "live"


def test_the_python_client_raises_what_the_server_refuses(subscribed: Subscribed) -> None:
    with k2.Client(subscribed.server.url, api_key="k2_unknown") as client, pytest.raises(K2APIError) as refused:
        next(iter(client.subscribe("trades")))
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")


def bar_trades() -> list[dict]:
    """40 trades of TST 100 ms apart from SINCE: ten in each of four 1 s bars, prices moving within each."""
    return [make_trade(n * 100, price=f"1.{n % 7}{n % 3}") for n in range(40)]


def read_bars(ws: ClientConnection) -> Iterator[tuple[list[dict], dict]]:
    """(bar rows, trailer) per frame until the first live frame with every bar final."""
    finals = 0
    for records, trailer in frames(ws):
        finals += sum(r["final"] for r in records)
        assert "phase" in trailer, trailer
        yield records, trailer
        if trailer["phase"] == "live" and finals and not any(not r["final"] for r in records):
            return


def test_bars_form_then_close_with_the_values_of_v1_bars_and_resume_without_doubling(subscribed: Subscribed) -> None:
    trades = bar_trades()
    subscribed.live.produce(trades[:20])
    subscribed.live.sink_everything()
    subscribed.live.produce(trades[20:])  # only in Kafka: the tail
    params = {"kind": "bars", "interval": "1s", "symbols": "TST", "since": SINCE}
    url = subscribed.server.url.replace("http", "ws") + "/v1/subscribe?" + urlencode(params)
    # A browser's way in: the key as a subprotocol beside "k2", answered with "k2" alone.
    with connect(url, subprotocols=["k2", f"k2.key.{subscribed.key}"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "k2"
        got = list(read_bars(ws))
    rows = [r for records, _ in got for r in records]
    # The first frame: the history's first 7 trades (replay_batch_rows) as the forming first bar.
    assert [(r["timestamp"], r["trade_count"], r["final"]) for r in got[0][0]] == [
        ("2014-03-10T00:00:00.000000Z", 7, False)
    ]
    finals = [r for r in rows if r["final"]]
    assert [(r["timestamp"][11:19], r["trade_count"]) for r in finals] == [(f"00:00:0{s}", 10) for s in range(4)]

    subscribed.live.sink_everything()
    with httpx.Client(base_url=subscribed.server.url, headers={"X-API-Key": subscribed.key}) as http:
        bars = http.get("/v1/bars", params={"symbols": "TST", "interval": "1s", "start": SINCE}).json()["data"]
    assert [{k: v for k, v in r.items() if k != "final"} for r in finals] == bars  # exact decimal strings
    # Bar 0: quantities 1, 101, ..., 901 (4510) at 1.00, 1.11, ..., 1.20; 5724.49 / 4510 = 1.269288248... -> 1.26928825
    assert (bars[0]["quote_volume"], bars[0]["volume"], bars[0]["vwap"]) == (
        "5724.4900000000000000",
        "4510.00000000",
        "1.26928825",
    )

    # Resuming from a frame's cursor (the first, in the history; the last but one): the final bars sent before and after
    # it are each bar once.
    for at_frame in sorted({0, len(got) - 2}):
        trailer = got[at_frame][1]
        wait_until(lambda: not subscribed.state.open_subscriptions, 15, "the last subscription to be let go")
        with subscribed.connect(kind="bars", interval="1s", symbols="TST", cursor=trailer["cursor"]) as ws:
            after = [r for records, _ in read_bars(ws) for r in records if r["final"]]
        before = [r for records, _ in got[: at_frame + 1] for r in records if r["final"]]
        assert before + after == finals, at_frame

    # The Python client: the same final bars.
    wait_until(lambda: not subscribed.state.open_subscriptions, 15, "the last subscription to be let go")
    from_client = []
    with k2.Client(subscribed.server.url, api_key=subscribed.key) as client:
        for bar in client.subscribe("bars", ["TST"], since=SINCE, interval="1s"):
            from_client += [bar] if bar["final"] else []
            if len(from_client) == len(finals):
                break
    assert from_client == finals


def test_bars_need_an_interval_and_symbols_and_a_subprotocol_key_is_checked(subscribed: Subscribed) -> None:
    with subscribed.connect(kind="bars", symbols="TST") as ws:
        assert "interval goes with kind=bars" in orjson.loads(ws.recv())["error"]["message"]
    with subscribed.connect(kind="bars", interval="1s") as ws:
        assert "needs 1 to 100 symbols" in orjson.loads(ws.recv())["error"]["message"]
    url = subscribed.server.url.replace("http", "ws") + "/v1/subscribe?kind=trades"
    with connect(url, subprotocols=["k2", "k2.key.k2_unknown"]) as ws:  # type: ignore[list-item]
        assert orjson.loads(ws.recv())["error"]["code"] == "unauthorized"
    with k2.Client(subscribed.server.url, api_key=subscribed.key) as client, pytest.raises(ValueError, match="bars"):
        client.subscribe("bars", ["TST"])


def test_one_record_table_is_encoded_once_for_every_subscriber_handed_it() -> None:
    shared = SharedLines(size=1)
    rows = pa.table({"message_id": ["a", "b"], "price": [1, 2]})
    first = shared.lines(rows)
    assert first == b'{"message_id":"a","price":1}\n{"message_id":"b","price":2}\n'
    assert shared.lines(rows) is first  # the same table again: not encoded again
    other = pa.table({"message_id": ["c"], "price": [3]})
    assert shared.lines(other) == b'{"message_id":"c","price":3}\n'
    assert shared.lines(rows) == first and shared.lines(rows) is not first  # pushed out by `other`: encoded anew


def test_frames_that_queued_leave_as_one_message_of_their_phase_within_the_batch_size() -> None:
    def frame(name: str, records: int, phase: str = "live") -> Frame:
        return Frame(b"".join(b'{"id":"%s%d"}\n' % (name.encode(), i) for i in range(records)), name, records, phase)

    async def scenario() -> list[list[Frame]]:
        buffer = FrameBuffer(limit=100)
        queued = [frame("t", 2, "tail"), frame("p", 0), frame("a", 2), frame("b", 3), frame("c", 1), frame("d", 0)]
        for item in queued:
            assert await buffer.put(item, wait=False)
        await buffer.close()
        taken = []
        while batch := await buffer.get(records=5):
            taken.append(batch)
        return taken

    taken = asyncio.run(scenario())
    # the tail's frame alone (the next is another phase); the phase change alone; then 2 + 3 = 5; then the rest
    assert [[f.cursor for f in batch] for batch in taken] == [["t"], ["p"], ["a", "b"], ["c", "d"]]
    text = frame_text(taken[2])
    assert text.splitlines() == [
        '{"id":"a0"}', '{"id":"a1"}', '{"id":"b0"}', '{"id":"b1"}', '{"id":"b2"}',
        '{"cursor":"b","phase":"live","records":5}',
    ]  # fmt: skip
