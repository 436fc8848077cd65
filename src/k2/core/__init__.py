"""What every room may use, below all of them: the metrics registry (`metrics`), the circuit breaker (`breaker`),
and the batches of records and rejects a source hands on (`batch`). Imports nothing of K2 but `k2.schema`."""
