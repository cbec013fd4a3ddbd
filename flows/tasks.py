"""Prefect tasks: thin wrappers of the stage functions, with retries only around I/O."""

from __future__ import annotations

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import Task, exponential_backoff

from pipeline.base_model import base_model_fingerprint
from pipeline.config import PipelineConfig, Settings
from pipeline.ingest.client import LabelStudioError
from pipeline.ingest.pull import Pull, pull_project, pull_summary
from pipeline.track import change_detection, tracking
from pipeline.track.change_detection import TrainDecision
from pipeline.track.promotion import Assessment, assess_adapter, promote, write_artifacts
from pipeline.track.work_runs import RunClaim, claim_run
from pipeline.train.launch import train_with_torchrun
from pipeline.train.recipe import train_adapter
from pipeline.train.results import TrainResult
from pipeline.validate.prepare import PreparedDataset, prepare_dataset
from pipeline.validate.report import validation_summary
from pipeline.validate.snapshot import Snapshot, previous_snapshot


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
def check_base_model(config: PipelineConfig) -> str:
    """Resolve the base model before anything is pulled: a missing or unreachable one stops the flow here
    with one line; returns its fingerprint (weights hash or hub commit) for change detection."""
    fingerprint = base_model_fingerprint(config.base_model)
    get_run_logger().info("base model %s: %s", config.base_model, fingerprint)
    return fingerprint


@task(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=_retry_transient)
def decide_training(
    prepared: PreparedDataset, config: PipelineConfig, base_fingerprint: str, force: bool
) -> TrainDecision:
    """Train only when the accepted dataset differs enough from the last trained one (or when forced)."""
    decision = change_detection.decide_training(
        prepared.snapshot, config, base_fingerprint, Settings().mlflow_tracking_uri, force=force
    )
    get_run_logger().info("%s: %s", "training" if decision.train else "not training", decision.reason)
    return decision


@task(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=_retry_transient)
def open_run(
    config: PipelineConfig, snapshot: Snapshot, key: str, base_fingerprint: str, flow_run_id: str, force: bool
) -> RunClaim:
    """The MLflow run of this work: reopened after a crash, reported as finished when it already is, or new
    (with params, tags, the dataset inputs, the validation artifacts and the data counts)."""
    uri = Settings().mlflow_tracking_uri
    claim = claim_run(
        uri,
        config,
        snapshot,
        key=key,
        base_fingerprint=base_fingerprint,
        tags={"prefect_flow_run_id": flow_run_id},
        force=force,
    )
    logger = get_run_logger()
    if claim.finished:
        logger.info("work %s was already trained in MLflow run %s", key, claim.run_id)
    elif claim.resumed:
        logger.info("resuming work %s in MLflow run %s", key, claim.run_id)
    else:
        tracking.log_artifacts(uri, claim.run_id, snapshot.path, "validation")
        counts = snapshot.meta.get("reconciliation", {})
        tracking.log_metrics(
            uri,
            claim.run_id,
            {
                f"data_{name}": float(counts[field])
                for name, field in (
                    ("tasks_seen", "tasks_seen"),
                    ("rows_accepted", "accepted"),
                    ("rows_quarantined", "quarantined"),
                    ("tasks_unusable", "unusable"),
                )
                if isinstance(counts.get(field), int | float)
            },
        )
    return claim


# A Prefect retry of the train task resumes from the newest checkpoint (train_adapter(resume=True)).
@task(retries=1, retry_delay_seconds=5)
def train(config: PipelineConfig, snapshot: Snapshot, run_id: str, adapter_dir: str) -> TrainResult:
    """Train on the snapshot's frozen train rows, resuming from the newest checkpoint of this work if there is
    one, streaming step metrics to the MLflow run; `train.gpus > 1` runs the DDP path under torchrun."""
    settings = Settings()
    if config.train.gpus > 1:
        result = train_with_torchrun(config, snapshot.path, adapter_dir)
        logger = tracking.StepLogger(settings.mlflow_tracking_uri, run_id)
        for log in result.history:
            logger(log)
    else:
        train_df, eval_df = snapshot.split()
        result = train_adapter(
            config,
            train_df,
            eval_df,
            adapter_dir,
            dataset_hash=snapshot.hash,
            on_step=tracking.StepLogger(settings.mlflow_tracking_uri, run_id),
            resume=True,
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
            "train_resumed_from_step": float(result.manifest.get("resumed_from_step", 0)),
            **({"train_mfu": result.mfu} if result.mfu is not None else {}),
        },
    )
    return result


@task
def evaluate(config: PipelineConfig, result: TrainResult, snapshot: Snapshot, run_id: str) -> Assessment:
    """Forgetting check, task evaluation and gate verdict on the saved adapter; logs metrics, the report,
    per-item scores, the side-by-side table, plots and the adapter itself."""
    settings = Settings()
    uri = settings.mlflow_tracking_uri
    _, eval_df = snapshot.split()
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
