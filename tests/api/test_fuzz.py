"""Property test over the OpenAPI description: schemathesis turns each documented GET into a hypothesis strategy of
requests; none may make the server fail (5xx), and every refusal carries the error envelope.

The server is a whole deployment — its own lake and a running Kafka + registry — so `fresh=true` reads really read
a tail; without Kafka they answer a documented 503 (tests/api/test_reads.py).

Driven by hand rather than through schemathesis' pytest plugin, which does not load under pytest 9.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.configuration import set_hypothesis_home_dir

from k2.api import create_key
from k2.bus.stack import Stack
from tests.api.conftest import build_lake, serving

EXAMPLES_PER_ROUTE = 10


def test_no_generated_request_fails_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_hypothesis_home_dir(tmp_path / "hypothesis")  # its caches go to the test's directory, not the repository
    lake = build_lake(tmp_path / "k2home")
    for var in ("K2_KAFKA_BOOTSTRAP", "K2_SCHEMA_REGISTRY_URL"):
        monkeypatch.delenv(var, raising=False)
    with Stack(lake.settings), serving(lake.settings) as server:
        _fuzz(server.url, create_key(lake.settings, "fuzz"))


def _fuzz(url: str, api_key: str) -> None:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 13
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_ROUTE, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def no_server_error(case: schemathesis.Case) -> None:
            if case.path == "/v1/replay":
                # A slow pace is a valid request that takes hours; the pacing has its own test.
                case.query = {**(case.query or {}), "speed": 0}
            response = case.call(base_url=url, headers={"X-API-Key": api_key})
            assert response.status_code < 500, (case.path, case.query, response.text)
            if response.status_code >= 400:
                assert response.json()["error"]["message"], response.text

        no_server_error()
