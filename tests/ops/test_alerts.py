"""The alert rules and the Grafana dashboard match reality: promtool accepts and unit-tests the rules, and every
series they (and the dashboard) use is one k2.core.metrics exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric

from k2.core.metrics import REGISTRY

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "k2-alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "k2-alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "k2-dashboard.json"
SERIES = re.compile(r"\bk2_[a-z0-9_]+\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: install Debian's prometheus package (make test does)")
    return found


def exported_series() -> set[str]:
    families: list[Metric] = list(REGISTRY.collect())
    return {family.name + suffix for family in families for suffix in SUFFIXES[family.type]}


def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    checked = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 11 rules found" in checked.stdout
    tested = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_series_the_rules_use_is_exported() -> None:
    used = set(SERIES.findall(RULES.read_text()))
    assert len(used) >= 9
    assert used <= exported_series(), used - exported_series()


def test_every_series_the_dashboard_plots_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in expressions for name in SERIES.findall(expr)}
    assert len(expressions) >= 22
    assert used <= exported_series(), used - exported_series()
    # ...and it plots every family K2 exports, so nothing measured goes unseen.
    families = {family.name for family in REGISTRY.collect()}
    assert {name for name in families if any(series.startswith(name) for series in used)} == families
