"""An Iceberg REST catalog server in front of any pyiceberg catalog (K2's SQL catalog by default).

One endpoint for many sink workers and readers, with the catalog database's credentials in one place: clients set
K2_CATALOG_PROPERTIES='{"type": "rest", "uri": "http://host:8181"}' and need no database access. The server speaks
the subset of the Apache Iceberg REST catalog API (open-api/rest-catalog-open-api.yaml) that pyiceberg's RestCatalog
uses: config, namespaces, tables, single-table commits and renames. Views, register, server-side scan planning,
multi-table transactions, metrics and credential vending are not served and not advertised in /v1/config.

Bodies are pyiceberg's own pydantic models (TableMetadata, CommitTableRequest, TableRequirement, TableUpdate...);
errors use the spec's ErrorModel, {"error": {"message", "type", "code"}}. Commits are delegated whole to the backend's
`commit_table`, which checks the requirements and swaps the metadata pointer atomically: a requirement not met or a
lost race is a 409 CommitFailedException, which pyiceberg clients (and the sink) retry.

Storage is not proxied: clients read and write data files themselves, with their own `s3.*` properties.

Three parts: `store` (the protocol's bodies and errors, namespace paths, paging, staged creates and the commit, over
the backend catalog), `routes` (the HTTP API, thin handlers) and `server` (the app factory, `backend_settings` and
`serve_rest_catalog`, which `k2 catalog-serve` runs).
"""

from k2.lake.rest_catalog.server import backend_settings, rest_catalog_app, serve_rest_catalog

__all__ = ["backend_settings", "rest_catalog_app", "serve_rest_catalog"]
