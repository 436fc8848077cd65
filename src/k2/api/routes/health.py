"""Liveness and readiness, open to every caller (no API key): for load balancers and orchestrators."""

from __future__ import annotations

from fastapi import APIRouter, Request

from k2.api.errors import ApiError, documented
from k2.api.models import Health
from k2.api.state import request_state
from k2.schema.fields import ALL_RECORDS

router = APIRouter(tags=["health"])


@router.get("/health", summary="The process is up", response_model=Health)
async def health() -> Health:
    return Health(status="ok")


@router.get(
    "/ready",
    summary="The catalog is reachable; each table's current snapshot (null: nothing committed to it yet)",
    response_model=Health,
    responses=documented(503, 504),
)
async def ready(request: Request) -> Health:
    state = request_state(request)
    engine = state.require_engine()

    def check() -> dict[str, int | None]:
        try:
            tables = {spec.name: engine.table(spec.name) for spec in ALL_RECORDS}
        except Exception as exc:
            # Any failure here means "not ready"; the type says which (SQL driver, I/O, ...), the text may not.
            raise ApiError(503, f"the catalog is unreachable ({type(exc).__name__}): check K2_CATALOG_URI") from exc
        # A table the sink has not created yet (a lake of ASX files has no stream_gaps) reads as empty: not a reason
        # to take the API out of a load balancer.
        snapshots = {name: table.current_snapshot() if table is not None else None for name, table in tables.items()}
        return {name: None if snapshot is None else snapshot.snapshot_id for name, snapshot in snapshots.items()}

    return Health(status="ready", tables=await state.run(check))
