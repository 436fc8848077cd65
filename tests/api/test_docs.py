"""/docs (Swagger UI) and /redoc render the API's operations in a browser that can reach nothing but this server."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.api.conftest import Server
from tests.dashboard.browser import Browser, chromium_path

_URL = re.compile(r"https?://[^\s\"'<>`)]+")

# Every operation Swagger UI drew: (method, path) from the summary line of each `.opblock`.
SWAGGER_OPERATIONS = """
(() => {
  const ops = [...document.querySelectorAll('#swagger-ui .opblock')].map(op => [
    op.querySelector('.opblock-summary-method')?.textContent.toLowerCase(),
    op.querySelector('.opblock-summary-path')?.dataset.path,
  ]);
  return ops.length > 0 && ops.every(([method, path]) => method && path) && ops;
})()
"""

# Every operation ReDoc drew: its section ids are "operation/<operationId>".
REDOC_OPERATIONS = """
(() => {
  const ids = [...document.querySelectorAll('[data-section-id^="operation/"]')]
    .map(e => e.dataset.sectionId.slice('operation/'.length));
  return ids.length > 0 && ids;
})()
"""


@pytest.fixture(scope="module")
def openapi(server: Server) -> dict:
    response = httpx.get(f"{server.url}/openapi.json")
    response.raise_for_status()
    return response.json()


@pytest.fixture
def browser() -> Iterator[Browser]:
    if chromium_path() is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (the Makefile's test target does this)")
    with Browser(offline=True) as running:
        yield running


def operations(openapi: dict) -> list[tuple[str, str, str]]:
    """(method, path, operationId) of every operation the description holds."""
    return [
        (method, path, operation["operationId"])
        for path, methods in openapi["paths"].items()
        for method, operation in methods.items()
    ]


def foreign_urls(text: str, own: str) -> list[str]:
    return [url for url in _URL.findall(text) if not url.startswith(own)]


def assert_only_own_requests(browser: Browser, server: Server) -> None:
    """Everything the page fetched came from this server (or was built in the page: data:, blob:); anything else
    it asked for, the page's own Content-Security-Policy stopped before it left the browser."""
    browser.evaluate("document.readyState")  # drains the request events received so far
    assert browser.requests, "the browser saw no requests at all"
    foreign = [url for url in browser.requests if not url.startswith((server.url + "/", "data:", "blob:"))]
    assert {url: browser.blocked.get(url) for url in foreign} == dict.fromkeys(foreign, "csp")


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_name_no_other_host(server: Server, path: str) -> None:
    response = httpx.get(f"{server.url}{path}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert foreign_urls(response.text, server.url) == []
    # The assets the page names are served here.
    for asset in re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', response.text):
        assert httpx.get(f"{server.url}{asset}").status_code == 200, asset


def test_swagger_ui_draws_every_operation_offline(server: Server, openapi: dict, browser: Browser) -> None:
    browser.goto(f"{server.url}/docs")
    drawn = browser.wait_for(SWAGGER_OPERATIONS)

    assert sorted(map(tuple, drawn)) == sorted((method, path) for method, path, _ in operations(openapi))
    assert ["get", "/v1/trades"] in drawn
    assert_only_own_requests(browser, server)


def test_redoc_draws_every_operation_offline(server: Server, openapi: dict, browser: Browser) -> None:
    browser.goto(f"{server.url}/redoc")
    drawn = browser.wait_for(REDOC_OPERATIONS)

    assert sorted(drawn) == sorted(operation_id for _, _, operation_id in operations(openapi))
    trades = next(op for method, path, op in operations(openapi) if (method, path) == ("get", "/v1/trades"))
    shown = browser.evaluate(f"document.querySelector('[data-section-id=\"operation/{trades}\"]').innerText")
    assert "GET\n/v1/trades\n" in shown
    assert_only_own_requests(browser, server)
