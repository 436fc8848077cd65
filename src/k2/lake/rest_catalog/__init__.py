"""K2's Iceberg REST catalog server (`k2 catalog-serve`): a package, so the protocol's data and the backend calls,
the HTTP routes and the server that runs them can live in modules of their own."""

from k2.lake.rest_catalog.store import backend_settings, rest_catalog_app, serve_rest_catalog

__all__ = ["backend_settings", "rest_catalog_app", "serve_rest_catalog"]
