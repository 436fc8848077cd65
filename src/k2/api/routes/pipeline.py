"""How the pipeline is doing: lake growth, sink lag per topic, dead letters, stream gaps, degradation level."""

from __future__ import annotations

from fastapi import APIRouter, Request

from k2.api.errors import documented
from k2.api.state import request_state
from k2.ops.health import PipelineHealth, pipeline_health

router = APIRouter(tags=["operations"])


@router.get(
    "/pipeline",
    summary="Pipeline health: rows and throughput per table, consumer lag, DLQ counts, stream gaps, degradation",
    description=(
        "Computed on each call from the lake (table sizes; rows appended per second over the last minute from the"
        " snapshot summaries; the appends of the last ten minutes), from the Kafka log this K2_HOME's stack or"
        " K2_KAFKA_BOOTSTRAP names (per market topic: log end, the sink group's committed offsets and the lag"
        " between them; messages held per dlq.* topic), and from market_data.stream_gaps. Without a reachable"
        " Kafka, `kafka.available` is false with the reason. `degradation.producers` lists the sources producing in"
        " the API's process (the Binance stream and ASX load of `k2 up`) with their controllers' levels;"
        " `degradation.level` is the highest, NORMAL with `controlled` false when none produces."
    ),
    response_model=PipelineHealth,
    responses=documented(401, 429, 500, 504),
)
async def get_pipeline(request: Request) -> PipelineHealth:
    state = request_state(request)
    return await state.run(lambda: pipeline_health(state.settings, state.reading))
