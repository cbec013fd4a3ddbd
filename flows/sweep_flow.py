"""The sweep flow: one parent MLflow run, one nested child run per (rank, learning rate, targets) config, all on
the same snapshot and its frozen eval split; the trade-off table, the Pareto plot and the recommended child on
the parent (pipeline/track/sweep.py, pipeline/evaluate/tradeoff.py).

One code path, two placements, as the ingest flow's training: without `child_deployment` the children run in
this process one after another (`sweep_child_flow` as a subflow); with it (e.g. `lora-sweep-child/gpu`) every
child starts at once as a run of that deployment, and the gpu pool's concurrency limit spreads them over its
GPUs. Only references cross: snapshot path + hash, the child's config as plain data, its MLflow run id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from flows.retries import retry_transient
from flows.train_flow import load_reference
from flows.work_dir import default_work_dir
from pipeline.config import PipelineConfig, Settings, resolve_config
from pipeline.evaluate.tradeoff import Recommendation, SweepPoint
from pipeline.track.sweep import (
    AlphaPolicy,
    ChildSpec,
    SweepRuns,
    config_of,
    end_sweep,
    finish_sweep,
    open_sweep,
    parse_targets,
    plan_children,
    read_point,
    run_child,
)
from pipeline.validate.snapshot import Snapshot, load_snapshot


@dataclass(frozen=True)
class SweepOutcome:
    """What the sweep reports: the parent run, the recommended child (None: none qualified) and why, every point."""

    parent_run_id: str
    recommended_run_id: str | None
    recommended_label: str | None
    reason: str
    points: list[dict[str, Any]] = field(default_factory=list)
    report_dir: str = ""


@task(
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=retry_transient,
)
def open_runs(config: PipelineConfig, snapshot: Snapshot, specs: list[ChildSpec]) -> SweepRuns:
    """The parent run and every child run, before any training."""
    return open_sweep(
        Settings().mlflow_tracking_uri, config, snapshot, specs, tags={"prefect_flow_run_id": str(flow_run.id or "")}
    )


@task(cache_policy=NO_CACHE)
def train_and_assess(spec: ChildSpec, snapshot: Snapshot, run_id: str, adapter_dir: str) -> SweepPoint:
    """Train and assess one child in its run (a failure ends the run FAILED and returns a failed point)."""
    tags = {"prefect_flow_run_id": str(flow_run.id or "")}  # this child's flow run (a subflow or a worker's)
    point = run_child(Settings().mlflow_tracking_uri, spec, snapshot, run_id, adapter_dir, tags)
    logger = get_run_logger()
    if point.status == "FAILED":
        logger.warning("sweep child %s failed: %s", spec.label, point.error)
    else:
        logger.info("sweep child %s: task gain %+.4f, forgetting %s", spec.label, point.task_gain, point.forgetting)
    return point


@flow(name="lora-sweep-child", log_prints=True)
def sweep_child_flow(
    snapshot_dir: str, snapshot_hash: str, label: str, config: dict[str, Any], run_id: str, adapter_dir: str
) -> dict[str, Any]:
    """One child of a sweep, in the MLflow run the parent opened for it: train, assess, log its point."""
    snapshot = load_reference(snapshot_dir, snapshot_hash)
    spec = ChildSpec(label, PipelineConfig.model_validate(config))
    return train_and_assess(spec, snapshot, run_id, adapter_dir).to_json_dict()


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient)
def collect(specs: list[ChildSpec], runs: SweepRuns, why_missing: dict[str, str]) -> list[SweepPoint]:
    """Every child's point, read back from its run (a child that logged none is ended FAILED)."""
    uri = Settings().mlflow_tracking_uri
    return [read_point(uri, s, runs.child_ids[s.label], why_missing.get(s.label, "")) for s in specs]


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient)
def report(runs: SweepRuns, points: list[SweepPoint], out_dir: str) -> Recommendation:
    """Trade-off table, Pareto plot and the recommended child, on the parent run."""
    return finish_sweep(Settings().mlflow_tracking_uri, runs.parent_id, points, out_dir)


def _wait_all(flow_run_ids: dict[str, UUID], poll_s: float = 2.0) -> dict[str, str]:
    """Wait for every child flow run to end; for each that did not complete, why (its final state)."""
    pending, why = dict(flow_run_ids), {}
    with get_client(sync_client=True) as client:
        while pending:
            for label, run_id in list(pending.items()):
                state = client.read_flow_run(run_id).state
                if state is not None and state.is_final():
                    del pending[label]
                    if not state.is_completed():
                        why[label] = f"its flow run {run_id} ended {state.name}: {state.message or ''}".strip()
            if pending:
                time.sleep(poll_s)
    return why


@flow(name="lora-sweep", log_prints=True)
def sweep_flow(
    snapshot_dir: str,
    ranks: list[int],
    learning_rates: list[float] | None = None,
    targets: list[str] | None = None,
    alpha: AlphaPolicy = "scale",
    config_path: str | None = None,
    base_model: str | None = None,
    work_dir: str | None = None,
    child_deployment: str | None = None,
) -> SweepOutcome:
    """Train and assess one child per config on the snapshot; log the trade-off and recommend one config."""
    started = time.perf_counter()
    config = resolve_config(config_path, base_model)
    snapshot = load_snapshot(snapshot_dir)
    specs = plan_children(config, ranks, learning_rates, [parse_targets(t) for t in targets or []] or None, alpha)
    runs = open_runs(config, snapshot, specs)
    root = Path(work_dir or default_work_dir()) / "sweeps" / runs.parent_id
    uri = Settings().mlflow_tracking_uri
    try:
        why_missing: dict[str, str] = {}
        if not child_deployment:
            for spec in specs:
                adapter_dir = str(root / spec.label / "adapter")
                # A subflow: its own flow run, as on a worker; a crash outside the child's own handling (a moved
                # snapshot) fails that child, not the sweep.
                state = sweep_child_flow(
                    str(snapshot.path),
                    snapshot.hash,
                    spec.label,
                    config_of(spec),
                    runs.child_ids[spec.label],
                    adapter_dir,
                    return_state=True,
                )
                if not state.is_completed():
                    why_missing[spec.label] = f"its subflow ended {state.name}: {state.message or ''}".strip()
        else:
            get_run_logger().info("starting %d runs of %s", len(specs), child_deployment)
            started_runs = {
                spec.label: run_deployment(
                    child_deployment,
                    parameters={
                        "snapshot_dir": str(snapshot.path.resolve()),
                        "snapshot_hash": snapshot.hash,
                        "label": spec.label,
                        "config": config_of(spec),
                        "run_id": runs.child_ids[spec.label],
                        "adapter_dir": str(root / spec.label / "adapter"),
                    },
                    timeout=0,  # start them all; the pool's concurrency limit decides how many run at once
                    as_subflow=True,
                ).id
                for spec in specs
            }
            why_missing = _wait_all(started_runs)
        points = collect(specs, runs, why_missing)
        rec = report(runs, points, str(root / "report"))
    except BaseException:
        end_sweep(uri, runs.parent_id, "FAILED", time.perf_counter() - started)
        raise
    end_sweep(uri, runs.parent_id, "FINISHED", time.perf_counter() - started)
    get_run_logger().info("sweep %s: %s", runs.parent_id, rec.reason)
    return SweepOutcome(
        parent_run_id=runs.parent_id,
        recommended_run_id=rec.point.run_id if rec.point else None,
        recommended_label=rec.point.label if rec.point else None,
        reason=rec.reason,
        points=[p.to_json_dict() for p in points],
        report_dir=str(root / "report"),
    )
