"""Whether a Prefect flow run has ended, for the sweeper of orphaned MLflow runs (pipeline/track/orphans.py)."""

from __future__ import annotations

from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound


def prefect_flow_run_ended(flow_run_id: str) -> str | None:
    """The final state name of a flow run ("Crashed", "Failed", ...), or None while it is not final or unknown."""
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(flow_run_id)).state
    except (ObjectNotFound, ValueError):
        return None  # another Prefect API, or a temporary one that is gone: the owner check decides
    if state is None or not state.is_final():
        return None
    return state.name
