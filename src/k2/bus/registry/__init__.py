"""K2's own Confluent-compatible schema registry (Avro only), stored in one SQLite file.

It serves the endpoints confluent-kafka's SchemaRegistryClient and Avro serializers call (docs/stack-notes.md, "Schema
registry"), so K2 and any Confluent client agree on schema ids. Three parts: `store` (subjects, versions, ids and levels
in SQLite, and the compatibility decisions), `routes` (the HTTP API over a store, in Confluent's error envelope) and
`server` (the app factory and `EmbeddedRegistry`, which runs it on a thread).
"""

from k2.bus.registry.routes import CONTENT_TYPE
from k2.bus.registry.server import EmbeddedRegistry, RegistryTls, create_registry_app
from k2.bus.registry.store import DB_FILE, LATEST, RegistryError, SchemaStore

__all__ = [
    "CONTENT_TYPE",
    "DB_FILE",
    "LATEST",
    "EmbeddedRegistry",
    "RegistryError",
    "RegistryTls",
    "SchemaStore",
    "create_registry_app",
]
