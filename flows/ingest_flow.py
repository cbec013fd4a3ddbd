"""The ingest flow, for a CPU work pool: pull -> validate + snapshot -> annotator feedback -> decide -> train.

A pull that brought nothing new (same task store, config, base model and code as the newest snapshot)
reuses that snapshot and skips validation and feedback (pipeline/validate/unchanged.py).

Training starts through the train deployment named by `train_deployment` (a GPU pool) with
`run_deployment`, or in this process when none is named (`lora-pipeline run`, the demo): one code path,
two placements. Only a reference crosses: snapshot path + hash + config as plain data.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from prefect.states import Completed

from flows.ingest_tasks import (
    check_base_model,
    decide_training,
    pull_annotations,
    reconciliation_of,
    reuse_unchanged_snapshot,
    send_annotator_feedback,
    stop_on_validation_errors,
    update_disagreements,
    validate_and_snapshot,
)
from flows.outcomes import IngestOutcome, TrainOutcome
from flows.work_dir import default_work_dir
from pipeline.config import resolve_config
from pipeline.validate.unchanged import input_fingerprint


@flow(name="lora-ingest", log_prints=True)
def ingest_flow(
    config_path: str | None = None,
    work_dir: str | None = None,
    base_model: str | None = None,
    train_deployment: str | None = None,
    force: bool = False,
) -> IngestOutcome:
    """Pull annotations, validate, snapshot, send feedback, and train when the accepted dataset changed."""
    config = resolve_config(config_path, base_model)
    root = Path(work_dir or default_work_dir())
    snapshots = str(root / "snapshots")
    fingerprint = check_base_model(config)
    pull = pull_annotations(config, snapshots)
    input_fp = input_fingerprint(pull, config, fingerprint)  # what a snapshot of this pull is made from
    snapshot = reuse_unchanged_snapshot(snapshots, input_fp)
    if snapshot is None:  # something new: validate, snapshot, tell annotators what to fix
        prepared = validate_and_snapshot(pull, snapshots, config, input_fp)
        send_annotator_feedback(config, pull, prepared)
        update_disagreements(config, pull, prepared)
        stop_on_validation_errors(prepared)
        snapshot = prepared.snapshot
    decision = decide_training(snapshot, config, fingerprint, force)
    outcome = IngestOutcome(
        snapshot_dir=str(snapshot.path.resolve()),
        snapshot_hash=snapshot.hash,
        reconciliation_table=reconciliation_of(snapshot).table(),
        trained=decision.train,
        message=decision.reason,
    )
    if not decision.train:
        return Completed(message=decision.reason, data=outcome)  # type: ignore[return-value]
    parameters = {
        "snapshot_dir": outcome.snapshot_dir,
        "snapshot_hash": snapshot.hash,
        "config": config.model_dump(mode="json"),
        "base_model_fingerprint": fingerprint,
        "force": force,
    }
    if not train_deployment:
        # Imported here: the training stack (torch, peft, lm-eval) loads only where training runs.
        from flows.train_flow import train_flow

        result: TrainOutcome = train_flow(**parameters, work_dir=str(root))
        return replace(outcome, train=result)
    get_run_logger().info("starting deployment %s for snapshot %s", train_deployment, snapshot.hash[:12])
    run = run_deployment(train_deployment, parameters=parameters, timeout=None, poll_interval=1, as_subflow=True)
    state = run.state
    if state is None or not state.is_completed():
        raise RuntimeError(
            f"train flow run {run.name} ({run.id}) of {train_deployment} ended "
            f"{state.name if state else 'without a state'}: {state.message if state else ''}"
        )
    return replace(outcome, train_flow_run_id=str(run.id), train_state=state.name)
