"""Truthful run state: a run whose flow was killed does not stay RUNNING (or claim FINISHED)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.config import load_config
from pipeline.track.orphans import TAG_FLOW_RUN, TAG_KILLED_REASON, mark_orphaned_runs, owner_tags
from pipeline.track.work_runs import claim_run
from pipeline.validate.snapshot import load_snapshot, write_snapshot
from tests.conftest import make_records

EXP = "run-state"


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _run(uri: str, tags: dict[str, str]) -> str:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXP)
    exp_id = exp.experiment_id if exp else client.create_experiment(EXP)
    return client.create_run(exp_id, tags=tags).info.run_id


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_runs_of_dead_owners_are_killed_and_live_ones_left(tmp_path: Path) -> None:
    uri = _uri(tmp_path)
    mine = _run(uri, owner_tags())
    dead = _run(uri, {**owner_tags(), "owner_pid": str(_dead_pid())})
    reused = _run(uri, {**owner_tags(), "owner_pid_started": "1"})  # same pid, another process
    elsewhere = _run(uri, {**owner_tags(), "owner_host": "another-host", "owner_pid": str(_dead_pid())})
    crashed_flow = _run(uri, {**owner_tags(), "owner_host": "another-host", TAG_FLOW_RUN: "f-1"})
    running_flow = _run(uri, {**owner_tags(), "owner_host": "another-host", TAG_FLOW_RUN: "f-2"})

    marked = dict(mark_orphaned_runs(uri, EXP, {"f-1": "Crashed"}.get))

    assert set(marked) == {dead, reused, crashed_flow}
    assert "Crashed" in marked[crashed_flow] and "is gone" in marked[dead]
    client = MlflowClient(uri)
    for run_id in (dead, reused, crashed_flow):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and run.data.tags[TAG_KILLED_REASON] == marked[run_id]
    for run_id in (mine, elsewhere, running_flow):
        assert client.get_run(run_id).info.status == "RUNNING"


def test_a_sigkilled_flow_process_leaves_a_run_the_next_sweep_kills_and_the_rerun_reopens(tmp_path: Path) -> None:
    """A real process claims the work's run, is SIGKILLed; the sweep marks the run KILLED with the reason, and
    the rerun of the same work reopens it (RUNNING, attempts 2, owned by the new process, reason cleared)."""
    uri = _uri(tmp_path)
    records = make_records(24)
    snap = write_snapshot(records, records.iloc[:0], tmp_path / "snapshots", meta={"source": {"project_id": 1}})
    cfg = load_config(mlflow={"experiment": EXP})
    code = (
        "import sys, time\n"
        "from pipeline.config import load_config\n"
        "from pipeline.track.work_runs import claim_run\n"
        "from pipeline.validate.snapshot import load_snapshot\n"
        f"cfg = load_config(mlflow={{'experiment': {EXP!r}}})\n"
        "claim = claim_run(sys.argv[1], cfg, load_snapshot(sys.argv[2]), key='k1', base_fingerprint='b')\n"
        "print(claim.run_id, flush=True)\n"
        "time.sleep(600)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", code, uri, str(snap.path)], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    run_id = proc.stdout.readline().decode().strip()
    assert run_id, "the claiming process printed no run id"
    assert mark_orphaned_runs(uri, EXP) == []  # alive: left alone
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    marked = mark_orphaned_runs(uri, EXP)

    assert [r for r, _ in marked] == [run_id]
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "KILLED"
    claim = claim_run(uri, cfg, load_snapshot(snap.path), key="k1", base_fingerprint="b")
    run = client.get_run(run_id)
    assert claim.run_id == run_id and claim.resumed
    assert run.info.status == "RUNNING" and run.data.tags["attempts"] == "2"
    assert run.data.tags["owner_pid"] == str(os.getpid()) and TAG_KILLED_REASON not in run.data.tags


@pytest.mark.slow
def test_prefect_flow_run_state_decides_for_runs_of_other_hosts(prefect_harness: None, tmp_path: Path) -> None:
    """The sweeper asks the real Prefect API: a run whose flow run Crashed is KILLED; unknown ids are left."""
    from prefect import flow

    from flows.orphans import prefect_flow_run_ended

    @flow
    def boom() -> None:
        raise RuntimeError("boom")

    state = boom(return_state=True)
    flow_run_id = str(state.state_details.flow_run_id)
    assert prefect_flow_run_ended(flow_run_id) == "Failed"
    assert prefect_flow_run_ended("00000000-0000-0000-0000-000000000000") is None
    uri = _uri(tmp_path)
    run_id = _run(uri, {**owner_tags(), "owner_host": "another-host", TAG_FLOW_RUN: flow_run_id})
    assert [r for r, _ in mark_orphaned_runs(uri, EXP, prefect_flow_run_ended)] == [run_id]
