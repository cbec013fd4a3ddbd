"""Truthful run state after a kill: RUNNING runs whose flow is gone are marked KILLED.

A SIGKILLed flow cannot end its MLflow run, so the run would stay RUNNING forever. Every run records its
owner (host, pid, the pid's start time); the next flow sweeps the experiment first and ends each RUNNING
run whose owner is provably gone: the orchestrator says its flow run ended (a callable the flows pass in),
or the owner ran on this host and that process no longer exists. A run owned by a live process, or by
another host whose flow run is still running, is left alone.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from mlflow.entities import Run

from pipeline.track.store import tracking_client

TAG_OWNER_HOST = "owner_host"
TAG_OWNER_PID = "owner_pid"
TAG_OWNER_STARTED = "owner_pid_started"
TAG_FLOW_RUN = "prefect_flow_run_id"
TAG_KILLED_REASON = "killed_reason"

FlowRunEnded = Callable[[str], str | None]  # flow run id -> why it ended, or None while it runs


def _process_started(pid: int) -> str | None:
    """The start time of `pid` in clock ticks since boot (tells a reused pid apart), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_tags() -> dict[str, str]:
    """Tags naming this process as the owner of a run."""
    pid = os.getpid()
    return {
        TAG_OWNER_HOST: socket.gethostname(),
        TAG_OWNER_PID: str(pid),
        TAG_OWNER_STARTED: _process_started(pid) or "",
    }


def orphan_reason(run: Run, flow_run_ended: FlowRunEnded | None = None) -> str | None:
    """Why a RUNNING run's owner is gone, or None when it may still be alive."""
    tags = run.data.tags
    flow_run = tags.get(TAG_FLOW_RUN)
    if flow_run and flow_run_ended is not None:
        ended = flow_run_ended(flow_run)
        if ended:
            return f"its flow run {flow_run} ended ({ended}) without ending the run"
    pid = tags.get(TAG_OWNER_PID, "")
    if tags.get(TAG_OWNER_HOST) == socket.gethostname() and pid.isdigit():
        started = _process_started(int(pid))
        if started is None or started != tags.get(TAG_OWNER_STARTED, started):
            return f"its process {pid} on {tags[TAG_OWNER_HOST]} is gone"
    return None


def mark_orphaned_runs(
    tracking_uri: str, experiment: str, flow_run_ended: FlowRunEnded | None = None
) -> list[tuple[str, str]]:
    """End every RUNNING run of `experiment` whose owner is gone as KILLED, tagged with the reason;
    returns (run id, reason) for each."""
    client = tracking_client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    marked = []
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    for run in runs:
        reason = orphan_reason(run, flow_run_ended)
        if reason is None:
            continue
        client.set_tag(run.info.run_id, TAG_KILLED_REASON, reason)
        client.set_terminated(run.info.run_id, "KILLED")
        marked.append((run.info.run_id, reason))
    return marked
