"""Prefect tasks: thin wrappers of the stage functions, with retries only around I/O."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import Task, exponential_backoff

from pipeline.config import PipelineConfig, Settings
from pipeline.ingest.client import LabelStudioError
from pipeline.ingest.pull import Pull, pull_project, pull_summary
from pipeline.track import tracking
from pipeline.track.promotion import Assessment, assess_adapter, promote, write_artifacts
from pipeline.train.recipe import train_adapter
from pipeline.train.results import TrainResult
from pipeline.validate.prepare import PreparedDataset, prepare_dataset
from pipeline.validate.report import validation_summary
from pipeline.validate.snapshot import previous_snapshot


def _retry_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry network hiccups, not configuration errors (a wrong token stays wrong)."""
    try:
        state.result()
    except (LabelStudioError, ValueError):
        return False
    except Exception:
        return True
    return False


@task(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=_retry_transient)
def pull_annotations(config: PipelineConfig, snapshots_root: str | None = None, full: bool = False) -> Pull:
    """Pull the configured Label Studio project (incrementally from the last snapshot under `snapshots_root`)."""
    pull = pull_project(Settings(), config.labelstudio, snapshots_root=snapshots_root, full=full)
    get_run_logger().info("%s", pull_summary(pull))
    return pull


@task(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=_retry_transient)
def send_annotator_feedback(config: PipelineConfig, pull: Pull, prepared: PreparedDataset) -> None:
    """Mark tasks that failed a check in Label Studio (task meta + the "needs fix" view); clear fixed ones."""
    from pipeline.validate.feedback import feedback_for_snapshot

    if not config.labelstudio.feedback:
        return
    result = feedback_for_snapshot(Settings(), config.labelstudio, pull.project.id, prepared.snapshot.path)
    get_run_logger().info("feedback to annotators: %s", result.as_dict())


# Prefect table artifacts are for reading in the UI; the full table is failures.parquet in the snapshot.
_ARTIFACT_MAX_ROWS = 1000


@task
def validate_and_snapshot(pull: Pull, snapshots_root: str, config: PipelineConfig) -> PreparedDataset:
    """Validate, reconcile and snapshot; publish the report and the failure table (see stop_on_validation_errors)."""
    prepared = prepare_dataset(pull, snapshots_root, config, previous_snapshot(snapshots_root))
    logger = get_run_logger()
    logger.info("reconciliation:\n%s", prepared.reconciliation.table())
    logger.info("validation:\n%s", validation_summary(prepared.validation))
    report = (prepared.snapshot.path / "validation_report.md").read_text()
    create_markdown_artifact(report, key="validation-report", description="pandera checks and reconciliation")
    failures = pd.read_parquet(prepared.snapshot.path / "failures.parquet")
    rows = failures.head(_ARTIFACT_MAX_ROWS).astype(object).where(lambda d: d.notna(), None).to_dict("records")
    if rows:
        create_table_artifact(
            rows,
            key="validation-failures",
            description=f"{len(failures)} failures (first {len(rows)} shown); full table: failures.parquet",
        )
    return prepared


@task
def stop_on_validation_errors(prepared: PreparedDataset) -> None:
    """Checks with policy `error` stop the flow here: after annotators got their feedback, before an MLflow
    run is opened or anything is trained."""
    prepared.validation.raise_for_errors()


@task
def start_tracking(config: PipelineConfig, prepared: PreparedDataset, flow_run_id: str) -> str:
    """Open the MLflow run with params, tags and the dataset input; returns its id."""
    settings = Settings()
    run_id = tracking.start_run(
        settings.mlflow_tracking_uri, config, prepared.snapshot, tags={"prefect_flow_run_id": flow_run_id}
    )
    tracking.log_artifacts(settings.mlflow_tracking_uri, run_id, prepared.snapshot.path, "validation")
    tracking.log_metrics(
        settings.mlflow_tracking_uri,
        run_id,
        {
            "data_tasks_seen": prepared.reconciliation.tasks_seen,
            "data_rows_accepted": prepared.reconciliation.accepted,
            "data_rows_quarantined": prepared.reconciliation.quarantined,
            "data_tasks_unusable": prepared.reconciliation.unusable,
        },
    )
    return run_id


@task
def train(config: PipelineConfig, prepared: PreparedDataset, run_id: str, adapters_root: str) -> TrainResult:
    """Train the adapter on the snapshot's frozen train rows, streaming step metrics to the MLflow run."""
    settings = Settings()
    snapshot = prepared.snapshot
    train_df, eval_df = snapshot.split()
    out = Path(adapters_root) / run_id
    result = train_adapter(
        config,
        train_df,
        eval_df,
        out,
        dataset_hash=snapshot.hash,
        on_step=tracking.StepLogger(settings.mlflow_tracking_uri, run_id),
    )
    tracking.log_metrics(
        settings.mlflow_tracking_uri,
        run_id,
        {
            "eval_loss": result.eval_loss,
            "train_loss_final": result.final_loss,
            "train_steps": result.steps,
            "train_wall_time_s": result.wall_time_s,
            "trainable_params": result.trainable_params,
            "trainable_share": result.trainable_share,
            "train_tokens_per_s": result.tokens_per_s,
            "train_peak_memory_bytes": result.peak_memory_bytes,
            "adapter_bytes": result.adapter_bytes,
            **({"train_mfu": result.mfu} if result.mfu is not None else {}),
        },
    )
    return result


@task
def evaluate(config: PipelineConfig, result: TrainResult, prepared: PreparedDataset, run_id: str) -> Assessment:
    """Forgetting check, task evaluation and gate verdict on the saved adapter; logs metrics, the report,
    per-item scores, the side-by-side table, plots and the adapter itself."""
    settings = Settings()
    uri = settings.mlflow_tracking_uri
    _, eval_df = prepared.snapshot.split()
    assessment = assess_adapter(config, result.adapter_dir, eval_df, tracking_uri=uri)
    metrics = assessment.metrics()
    if "forgetting_wall_time_s" in metrics and result.wall_time_s > 0:
        # What the forgetting check costs next to training (issue 5 budget: <= 0.15 at the demo's settings).
        metrics["forgetting_to_train_time_ratio"] = metrics["forgetting_wall_time_s"] / result.wall_time_s
    tracking.log_metrics(uri, run_id, metrics)
    out = write_artifacts(assessment, result.history, result.adapter_dir.parent / f"{run_id}-evaluation")
    tracking.log_artifacts(uri, run_id, out, "evaluation")
    tracking.log_table(uri, run_id, assessment.task.side_by_side, "evaluation/side_by_side_table.json")
    tracking.log_artifacts(uri, run_id, result.adapter_dir, "adapter")
    create_markdown_artifact(assessment.report_markdown(), key="promotion-gate", description="gate verdict")
    verdict = assessment.verdict
    get_run_logger().info("gate %s", "passed" if verdict.passed else f"failed: {verdict.failed_rules}")
    return assessment


@task(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=_retry_transient)
def promote_adapter(config: PipelineConfig, result: TrainResult, assessment: Assessment, run_id: str) -> str | None:
    """Register a passing adapter in the MLflow registry under its alias; returns the version (None: gate failed)."""
    uri = Settings().mlflow_tracking_uri
    version = promote(config, result.adapter_dir, assessment, tracking_uri=uri, run_id=run_id)
    if version is None:
        return None
    tracking.log_metrics(uri, run_id, {"registered_version": float(version.version)})
    get_run_logger().info("registered %s version %s with aliases %s", version.name, version.version, version.aliases)
    return str(version.version)


@task
def finish_tracking(run_id: str, status: str) -> None:
    """Mark the MLflow run FINISHED or FAILED."""
    tracking.end_run(Settings().mlflow_tracking_uri, run_id, status)
