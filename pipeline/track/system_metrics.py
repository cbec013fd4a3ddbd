"""MLflow's own system metrics (CPU, memory, disk, network, and GPU where NVML is present) on a run.

`system_metrics(...)` wraps MLflow's `SystemMetricsMonitor` — the monitor behind `log_system_metrics=True` —
for runs this project drives through the client rather than `mlflow.start_run`. The metrics land under
`system/` on the run page's "System metrics" tab. Monitoring is best-effort and never holds a run up: a
monitor that cannot start only logs a warning, and stopping it waits at most `stop_timeout_s` (during a
tracking outage MLflow's own flush would retry for minutes; the daemon thread is left to give up alone).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

log = logging.getLogger(__name__)


@contextmanager
def system_metrics(
    tracking_uri: str, run_id: str, *, interval_s: float | None, stop_timeout_s: float = 10.0
) -> Iterator[SystemMetricsMonitor | None]:
    """Sample system metrics into `run_id` every `interval_s` seconds while the block runs (None: off).

    A rerun of the same run (a resume) continues the `system/` series after their last step."""
    if interval_s is None:
        yield None
        return
    try:
        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=interval_s, resume_logging=True, tracking_uri=tracking_uri
        )
        monitor.start()
    except Exception as e:
        log.warning("system metrics are off for run %s: %s", run_id, e)
        yield None
        return
    try:
        yield monitor
    finally:
        stopper = threading.Thread(target=monitor.finish, name="system-metrics-stop", daemon=True)
        stopper.start()
        stopper.join(stop_timeout_s)
        if stopper.is_alive():
            log.warning("system metrics of run %s did not flush within %.0f s; left behind", run_id, stop_timeout_s)
