"""Prefect tasks of the ingest flow: thin wrappers of the ingest/validate stages, retries only around I/O.

Nothing here imports torch or the training/evaluation stack, so an ingest flow run (often one that finds
no new annotations) starts in seconds; the validation stack (tokenizer, pandera) is imported only when a
pull brought something new (`reuse_unchanged_snapshot`). Every task has `cache_policy=NO_CACHE`: a pull
must never be served from a cache, and the default policy would hash every input (whole pulls) per call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows.retries import retry_transient
from pipeline.base_model import base_model_fingerprint
from pipeline.config import PipelineConfig, Settings
from pipeline.ingest.pull import Pull, pull_project, pull_summary
from pipeline.ingest.reconcile import Reconciliation
from pipeline.track import change_detection
from pipeline.track.change_detection import TrainDecision
from pipeline.validate.snapshot import Snapshot
from pipeline.validate.unchanged import mark_feedback_delivered, unchanged_snapshot

if TYPE_CHECKING:
    from pipeline.validate.prepare import PreparedDataset


@task(
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=retry_transient,
)
def pull_annotations(config: PipelineConfig, snapshots_root: str | None = None, full: bool = False) -> Pull:
    """Pull the configured Label Studio project (incrementally from the last snapshot under `snapshots_root`)."""
    pull = pull_project(Settings(), config.labelstudio, snapshots_root=snapshots_root, full=full)
    get_run_logger().info("%s", pull_summary(pull))
    return pull


@task(cache_policy=NO_CACHE)
def reuse_unchanged_snapshot(snapshots_root: str, input_fp: str) -> Snapshot | None:
    """The newest snapshot when this pull brought nothing new (`input_fp`, pipeline/validate/unchanged.py);
    None: validate and snapshot this pull."""
    snapshot = unchanged_snapshot(snapshots_root, input_fp)
    if snapshot is not None:
        get_run_logger().info(
            "nothing new since snapshot %s (%s): reusing it, no validation or feedback to send",
            snapshot.hash[:12],
            snapshot.path.name,
        )
    return snapshot


def reconciliation_of(snapshot: Snapshot) -> Reconciliation:
    """The reconciliation a snapshot recorded when it was written."""
    return Reconciliation(**snapshot.meta["reconciliation"])


@task(
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=retry_transient,
)
def send_annotator_feedback(config: PipelineConfig, pull: Pull, prepared: PreparedDataset) -> None:
    """Mark tasks that failed a check in Label Studio (task meta + the "needs fix" view); clear fixed ones."""
    from pipeline.validate.feedback import feedback_for_snapshot

    if not config.labelstudio.feedback:
        return
    result = feedback_for_snapshot(Settings(), config.labelstudio, pull.project.id, prepared.snapshot.path)
    get_run_logger().info("feedback to annotators: %s", result.as_dict())


@task(
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=retry_transient,
)
def update_disagreements(config: PipelineConfig, pull: Pull, prepared: PreparedDataset) -> None:
    """Point Label Studio's "disagreements" tab at the tasks whose annotators disagree in this pull."""
    from pipeline.ingest.client import connect, retry_policy
    from pipeline.ingest.review_views import update_disagreements_view

    if not config.labelstudio.feedback:
        mark_feedback_delivered(prepared.snapshot.path, {"feedback": "off"})
        return
    settings, cfg = Settings(), config.labelstudio
    client = connect(
        settings.label_studio_url,
        settings.require_label_studio_key(),
        timeout_s=cfg.timeout_s,
        policy=retry_policy(cfg),
    )
    agreement = prepared.agreement
    ids = None if agreement is None else agreement.disagreements["task_id"].tolist()
    view = update_disagreements_view(client, pull.project.id, ids)
    if view is not None:
        get_run_logger().info("disagreements view %s lists %s tasks", view.view_id, len(view.task_ids))
    # Both feedback tasks reached Label Studio: a later pull with nothing new may reuse this snapshot.
    mark_feedback_delivered(prepared.snapshot.path, {"project_id": pull.project.id, "disagreements": ids})


# Prefect table artifacts are for reading in the UI; the full table is failures.parquet in the snapshot.
_ARTIFACT_MAX_ROWS = 1000


@task(cache_policy=NO_CACHE)
def validate_and_snapshot(
    pull: Pull, snapshots_root: str, config: PipelineConfig, input_fp: str | None = None
) -> PreparedDataset:
    """Validate, reconcile and snapshot; publish the report and the failure table (see stop_on_validation_errors).

    The snapshot records `input_fp` (`input_fingerprint` of this pull), so a later pull with nothing new reuses
    it (`reuse_unchanged_snapshot`)."""
    import pandas as pd
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from pipeline.validate.prepare import prepare_dataset
    from pipeline.validate.report import validation_summary
    from pipeline.validate.snapshot import previous_snapshot
    from pipeline.validate.visible_text import visible_preview

    prepared = prepare_dataset(
        pull, snapshots_root, config, previous_snapshot(snapshots_root), input_fingerprint=input_fp
    )
    logger = get_run_logger()
    logger.info("reconciliation:\n%s", prepared.reconciliation.table())
    logger.info("validation:\n%s", validation_summary(prepared.validation))
    report = (prepared.snapshot.path / "validation_report.md").read_text()
    create_markdown_artifact(report, key="validation-report", description="pandera checks and reconciliation")
    failures = pd.read_parquet(prepared.snapshot.path / "failures.parquet")
    shown = failures.head(_ARTIFACT_MAX_ROWS).astype(object).where(lambda d: d.notna(), None)
    if "value" in shown:  # as the report shows it: unquoted, trailing spaces and invisible characters marked
        shown["value"] = shown["value"].map(visible_preview)
    rows = shown.to_dict("records")
    if rows:
        create_table_artifact(
            rows,
            key="validation-failures",
            description=f"{len(failures)} failures (first {len(rows)} shown); full table: failures.parquet",
        )
    return prepared


@task(cache_policy=NO_CACHE)
def stop_on_validation_errors(prepared: PreparedDataset) -> None:
    """Checks with policy `error` stop the flow here: after annotators got their feedback, before an MLflow
    run is opened or anything is trained."""
    prepared.validation.raise_for_errors()


@task(cache_policy=NO_CACHE)
def check_base_model(config: PipelineConfig) -> str:
    """Resolve the base model before anything is pulled: a missing or unreachable one stops the flow here
    with one line; returns its fingerprint (weights hash or hub commit) for change detection."""
    fingerprint = base_model_fingerprint(config.base_model, allow_pickle_weights=config.model.allow_pickle_weights)
    get_run_logger().info("base model %s: %s", config.base_model, fingerprint)
    return fingerprint


@task(
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=retry_transient,
)
def decide_training(snapshot: Snapshot, config: PipelineConfig, base_fingerprint: str, force: bool) -> TrainDecision:
    """Train only when the accepted dataset differs enough from the last trained one (or when forced)."""
    decision = change_detection.decide_training(
        snapshot, config, base_fingerprint, Settings().mlflow_tracking_uri, force=force
    )
    get_run_logger().info("%s: %s", "training" if decision.train else "not training", decision.reason)
    return decision
