"""K2: market data from exchanges through Kafka into Apache Iceberg, queried with DuckDB."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # `k2.Client` without importing httpx and pyarrow for every `k2` command
    if name == "Client":
        from k2.client import Client

        return Client
    raise AttributeError(f"module 'k2' has no attribute {name!r}")
