"""An MLflow outage ends a run with one line that names the tracking URI and where the adapter was kept,
not with a traceback from deep inside MLflow's REST client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from pipeline.redact import redact


class TrackingUnavailable(RuntimeError):
    """MLflow stayed unreachable; the message says what was kept on disk and how to carry on."""


def reachable(tracking_uri: str, timeout_s: float = 5.0) -> bool:
    """Whether an MLflow server answers its health check (a local store always does)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return True
    try:
        return httpx.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def outage_message(tracking_uri: str, run_id: str, adapter_dir: str | Path | None, what: str) -> str:
    kept = f"; the adapter is kept at {adapter_dir}" if adapter_dir is not None else ""
    return (
        f"MLflow at {redact(tracking_uri)} is unreachable: {what} of run {run_id} did not reach it{kept}; "
        "run the flow again when MLflow is back (it resumes this work and run)"
    )


@contextmanager
def tracking_outage(tracking_uri: str, run_id: str, adapter_dir: str | Path | None, what: str) -> Iterator[None]:
    """Turn a failure while MLflow is unreachable into one `TrackingUnavailable` line; other errors pass."""
    try:
        yield
    except TrackingUnavailable:
        raise
    except Exception:
        if reachable(tracking_uri):
            raise
        raise TrackingUnavailable(outage_message(tracking_uri, run_id, adapter_dir, what)) from None
