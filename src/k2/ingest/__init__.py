"""Ingestion runs: a source's batches through the producer to Kafka, with the sink alongside, ending with a
reconciliation.

- `pipeline`: `k2 load` (files) — `produce`, `load`, and the sink that runs alongside a load.
- `streaming`: `k2 stream` (live Binance), resuming where the lake and the Kafka tail end.
- `reconcile`: read = produced + rejected, produced = written + already in lake + rejected by the sink.
- `degradation`: the levels, the governor between a source and the producer, and the spill it sets batches
  aside in.
"""
