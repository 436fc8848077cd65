"""The query tests' fixtures: a real SQLite catalog and file warehouse per test, with the K2 tables created."""

from tests.query.conftest import catalog, tables

__all__ = ["catalog", "tables"]
