"""The end-to-end flow: pull -> validate + snapshot -> track -> train -> evaluate -> finish."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from flows.tasks import (
    evaluate,
    finish_tracking,
    promote_adapter,
    pull_annotations,
    send_annotator_feedback,
    start_tracking,
    stop_on_validation_errors,
    train,
    validate_and_snapshot,
)
from pipeline.config import load_config


@dataclass(frozen=True)
class PipelineOutcome:
    """What a finished run produced, for the CLI to print."""

    run_id: str
    adapter_dir: str
    snapshot_dir: str
    metrics: dict[str, float]
    reconciliation_table: str
    gate_passed: bool = False
    # Model registry version of the adapter (None when the gate failed).
    registered_version: str | None = None


@flow(name="lora-pipeline", log_prints=True)
def lora_pipeline_flow(
    config_path: str | None = None, work_dir: str = "work", base_model: str | None = None
) -> PipelineOutcome:
    """Pull annotations, validate, snapshot, train a LoRA adapter, check forgetting and log it all to MLflow."""
    config = load_config(config_path, base_model=base_model)
    root = Path(work_dir)
    pull = pull_annotations(config, str(root / "snapshots"))
    prepared = validate_and_snapshot(pull, str(root / "snapshots"), config)
    send_annotator_feedback(config, pull, prepared)
    stop_on_validation_errors(prepared)
    run_id = start_tracking(config, prepared, str(flow_run.id or ""))
    try:
        result = train(config, prepared, run_id, str(root / "adapters"))
        assessment = evaluate(config, result, prepared, run_id)
        registered = promote_adapter(config, result, assessment, run_id)
    except BaseException:
        finish_tracking(run_id, "FAILED")
        raise
    finish_tracking(run_id, "FINISHED")
    return PipelineOutcome(
        run_id=run_id,
        adapter_dir=str(result.adapter_dir),
        snapshot_dir=str(prepared.snapshot.path),
        metrics={"eval_loss": result.eval_loss, "train_loss_final": result.final_loss, **assessment.metrics()},
        reconciliation_table=prepared.reconciliation.table(),
        gate_passed=assessment.verdict.passed,
        registered_version=registered,
    )
