"""K2: market data from exchanges through Kafka into Apache Iceberg, queried with DuckDB."""

__version__ = "0.1.0"
