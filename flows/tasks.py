"""Prefect tasks: thin wrappers of the stage functions, with retries only around I/O."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import Task, exponential_backoff

from pipeline import tracking
from pipeline.config import PipelineConfig, Settings
from pipeline.evaluate import ForgettingReport, evaluate_saved_adapter
from pipeline.ingest import PreparedDataset, Pull, prepare_dataset, pull_project
from pipeline.labelstudio.client import LabelStudioError
from pipeline.split import split_train_eval
from pipeline.train import TrainResult, train_adapter


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
def pull_annotations(config: PipelineConfig) -> Pull:
    """Pull every task of the configured Label Studio project."""
    pull = pull_project(Settings(), config.labelstudio)
    get_run_logger().info(
        "pulled %d tasks from Label Studio project %d (%s)",
        pull.normalized.tasks_seen,
        pull.project.id,
        pull.project.title,
    )
    return pull


@task
def validate_and_snapshot(pull: Pull, snapshots_root: str) -> PreparedDataset:
    """Validate, reconcile and snapshot; publishes the reconciliation and failures as Prefect artifacts."""
    prepared = prepare_dataset(pull, snapshots_root)
    rec = prepared.reconciliation
    get_run_logger().info("reconciliation:\n%s", rec.table())
    report = (prepared.snapshot.path / "validation_report.md").read_text()
    create_markdown_artifact(report, key="validation-report", description="pandera checks and reconciliation")
    failures = prepared.snapshot.path / "quarantine.parquet"
    rows = pd.read_parquet(failures).astype(object).where(lambda d: d.notna(), None).to_dict("records")
    if rows:
        create_table_artifact(rows, key="quarantined-rows", description="rows sent back to annotators")
    return prepared


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
    """Split the snapshot and train the adapter, streaming step metrics to the MLflow run."""
    settings = Settings()
    snapshot = prepared.snapshot
    train_df, eval_df = split_train_eval(snapshot.records, config.data.eval_fraction, snapshot.hash)
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
            "trainable_share": result.trainable_params / result.total_params,
        },
    )
    return result


@task
def evaluate(config: PipelineConfig, result: TrainResult, run_id: str) -> ForgettingReport:
    """Forgetting check on the saved adapter; logs metrics, the per-item scores and the adapter itself."""
    settings = Settings()
    report = evaluate_saved_adapter(config, result.adapter_dir)
    tracking.log_metrics(settings.mlflow_tracking_uri, run_id, report.metrics())
    scores = report.write(result.adapter_dir.parent / f"{run_id}-forgetting.json")
    tracking.log_artifact(settings.mlflow_tracking_uri, run_id, scores, "evaluation")
    tracking.log_artifacts(settings.mlflow_tracking_uri, run_id, result.adapter_dir, "adapter")
    m = report.metrics()
    create_markdown_artifact(
        "# Forgetting check\n\n| metric | base | adapter | delta |\n|---|---|---|---|\n"
        f"| perplexity | {m['forgetting_ppl_base']:.3f} | {m['forgetting_ppl_adapter']:.3f} | "
        f"{m['forgetting_ppl_delta']:+.3f} |\n"
        f"| multiple-choice accuracy | {m['forgetting_mc_acc_base']:.3f} | {m['forgetting_mc_acc_adapter']:.3f} | "
        f"{m['forgetting_mc_acc_delta']:+.3f} |\n",
        key="forgetting-check",
    )
    return report


@task
def finish_tracking(run_id: str, status: str) -> None:
    """Mark the MLflow run FINISHED or FAILED."""
    tracking.end_run(Settings().mlflow_tracking_uri, run_id, status)
