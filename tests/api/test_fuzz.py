"""Property test over the OpenAPI description: schemathesis turns each documented GET into a hypothesis strategy of
requests; none may make the server fail (5xx), and every refusal carries the error envelope.

Driven by hand rather than through schemathesis' pytest plugin, which does not load under pytest 9.
"""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.configuration import set_hypothesis_home_dir

from tests.api.conftest import Server

EXAMPLES_PER_ROUTE = 10


def test_no_generated_request_fails_the_server(server: Server, api_key: str, tmp_path: Path) -> None:
    set_hypothesis_home_dir(tmp_path / "hypothesis")  # its caches go to the test's directory, not the repository
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
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
            response = case.call(base_url=server.url, headers={"X-API-Key": api_key})
            assert response.status_code < 500, (case.path, case.query, response.text)
            if response.status_code >= 400:
                assert response.json()["error"]["message"], response.text

        no_server_error()
