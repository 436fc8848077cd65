"""K2's own Confluent-compatible schema registry (Avro only): a package, so the store, its HTTP routes and the
server that runs them can live in modules of their own."""

from k2.bus.registry.store import CONTENT_TYPE, DB_FILE, LATEST, EmbeddedRegistry, RegistryError, SchemaStore

__all__ = ["CONTENT_TYPE", "DB_FILE", "LATEST", "EmbeddedRegistry", "RegistryError", "SchemaStore"]
