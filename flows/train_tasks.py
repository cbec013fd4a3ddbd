"""Prefect tasks of the train flow: thin wrappers of the train/evaluate/track stages.

Every task has `cache_policy=NO_CACHE`: none may be served from a cache, and Prefect's default policy
would hash every input (snapshots, datasets) on each call to compute a key nobody uses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows.orphans import prefect_flow_run_ended
from flows.retries import retry_transient
from pipeline.config import PipelineConfig, Settings
from pipeline.redact import redact
from pipeline.track import tracking
from pipeline.track.orphans import mark_orphaned_runs
from pipeline.track.outage import reachable, tracking_outage
from pipeline.track.promotion import (
    Assessment,
    Promotion,
    assess_adapter,
    log_training_keys,
    promote,
    write_artifacts,
)
from pipeline.track.review import run_description, set_run_verdict, write_model_card
from pipeline.track.step_logger import StepLogger
from pipeline.track.store import tracking_client
from pipeline.track.work_runs import RunClaim, claim_run
from pipeline.train.launch import train_with_torchrun
from pipeline.train.recipe import train_adapter
from pipeline.train.results import TrainResult
from pipeline.validate.snapshot import Snapshot


@task(
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=retry_transient,
)
def open_run(
    config: PipelineConfig, snapshot: Snapshot, key: str, base_fingerprint: str, flow_run_id: str, force: bool
) -> RunClaim:
    """The MLflow run of this work: reopened after a crash, reported as finished when it already is, or new
    (with params, tags, the dataset inputs, the validation artifacts and the data counts)."""
    uri = Settings().mlflow_tracking_uri
    logger = get_run_logger()
    # Runs left RUNNING by killed flows are ended as KILLED first (one may be this work's, resumed below).
    for run_id, reason in mark_orphaned_runs(uri, config.mlflow.experiment, prefect_flow_run_ended):
        logger.warning("MLflow run %s marked KILLED: %s", run_id, reason)
    claim = claim_run(
        uri,
        config,
        snapshot,
        key=key,
        base_fingerprint=base_fingerprint,
        tags={"prefect_flow_run_id": flow_run_id},
        force=force,
    )
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
@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def train(config: PipelineConfig, snapshot: Snapshot, run_id: str, adapter_dir: str) -> TrainResult:
    """Train on the snapshot's frozen train rows, resuming from the newest checkpoint of this work if there is
    one, streaming step metrics to the MLflow run; `train.gpus > 1` runs the DDP path under torchrun."""
    uri = Settings().mlflow_tracking_uri
    # Metrics go out from a background thread: an MLflow outage never stalls training (see step_logger.py).
    steps = StepLogger(uri, run_id, adapter_dir=adapter_dir)
    try:
        if config.train.gpus > 1:
            result = train_with_torchrun(config, snapshot.path, adapter_dir)
            for log in result.history:
                steps(log)
        else:
            train_rows, eval_rows = snapshot.hf_split()  # memory-mapped Arrow, tokenized once (cached)
            result = train_adapter(
                config, train_rows, eval_rows, adapter_dir, dataset_hash=snapshot.hash, on_step=steps, resume=True
            )
        steps.flush(timeout_s=config.mlflow.outage_patience_s)
    finally:
        steps.close()
    with tracking_outage(uri, run_id, adapter_dir, "the training metrics"):
        tracking.log_metrics(
            uri,
            run_id,
            {
                **result.metrics(),
                "train_resumed_from_step": float(result.manifest.get("resumed_from_step", 0)),
                **({"train_mfu": result.mfu} if result.mfu is not None else {}),
            },
        )
    return result


@task(cache_policy=NO_CACHE)
def evaluate(config: PipelineConfig, result: TrainResult, snapshot: Snapshot, run_id: str) -> Assessment:
    """Forgetting check, task evaluation and gate verdict on the saved adapter; logs metrics, the report,
    per-item scores, the side-by-side table, plots and the adapter itself."""
    settings = Settings()
    uri = settings.mlflow_tracking_uri
    train_df, eval_df = snapshot.split()
    assessment = assess_adapter(config, result.adapter_dir, eval_df, tracking_uri=uri, train_records=train_df)
    write_model_card(result.adapter_dir, result.manifest, assessment, run_id=run_id)
    metrics = assessment.metrics()
    if "forgetting_wall_time_s" in metrics and result.wall_time_s > 0:
        # What the forgetting check costs next to training (issue 5 budget: <= 0.15 at the demo's settings).
        metrics["forgetting_to_train_time_ratio"] = metrics["forgetting_wall_time_s"] / result.wall_time_s
    out = write_artifacts(assessment, result.history, result.adapter_dir.parent / f"{run_id}-evaluation")
    with tracking_outage(uri, run_id, result.adapter_dir, "the evaluation and the adapter"):
        tracking.log_metrics(uri, run_id, metrics)
        set_run_verdict(
            uri, run_id, assessment, run_description(assessment, run_id=run_id, base_model=config.base_model)
        )
        log_training_keys(uri, run_id, train_df)
        tracking.log_artifacts(uri, run_id, out, "evaluation")
        tracking.log_table(uri, run_id, assessment.generations(), "evaluation/side_by_side_table.json")
        tracking.log_artifacts(uri, run_id, result.adapter_dir, "adapter")
    create_markdown_artifact(assessment.report_markdown(), key="promotion-gate", description="gate verdict")
    verdict = assessment.verdict
    get_run_logger().info("gate %s", "passed" if verdict.passed else f"failed: {verdict.failed_rules}")
    return assessment


@task(
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=retry_transient,
)
def promote_adapter(
    config: PipelineConfig, result: TrainResult, assessment: Assessment, snapshot: Snapshot, run_id: str, lock_dir: str
) -> Promotion:
    """Register a passing adapter under its alias, comparing with the champion again under the registry lock
    if it moved meanwhile (then the new verdict and report replace the logged ones)."""
    uri = Settings().mlflow_tracking_uri
    _, eval_df = snapshot.split()
    promotion = promote(
        config,
        result.adapter_dir,
        assessment,
        tracking_uri=uri,
        run_id=run_id,
        eval_records=eval_df,
        lock_dir=lock_dir,
        serving_check=_serving_check(config),
    )
    logger = get_run_logger()
    if promotion.refused is not None:
        tracking_client(uri).set_tag(run_id, "serving_check", f"refused: {promotion.refused}"[:5000])
        logger.warning("not registered: the serving check refused the adapter: %s", promotion.refused)
        return promotion
    if promotion.reassessed:
        again = promotion.assessment
        tracking.log_metrics(uri, run_id, again.metrics())
        tracking.log_text(uri, run_id, again.report_markdown(), "evaluation/gate_report.md")
        tracking.log_table(uri, run_id, again.generations(), "evaluation/side_by_side_table.json")
        set_run_verdict(uri, run_id, again, run_description(again, run_id=run_id, base_model=config.base_model))
        logger.info("the champion moved during evaluation: %s", again.champion_note)
    version = promotion.version
    if version is None:
        logger.info("not registered: gate failed %s", promotion.assessment.verdict.failed_rules)
        return promotion
    tracking.log_metrics(uri, run_id, {"registered_version": float(version.version)})
    model_uri = f"models:/{version.name}/{version.version}"
    final = promotion.assessment
    set_run_verdict(
        uri, run_id, final, run_description(final, run_id=run_id, base_model=config.base_model, model_uri=model_uri)
    )
    logger.info("registered %s version %s with aliases %s", version.name, version.version, version.aliases)
    return promotion


def _serving_check(config: PipelineConfig) -> Callable[[Path], object] | None:
    """The canary promotion runs before registering: the adapter loads through `lora-pipeline serve`'s loader for
    the configured engine and answers (pipeline/serve/canary.py); None when `gate.serving_check` is off."""
    engine = config.gate.serving_check
    if engine == "off":
        return None
    from pipeline.serve.canary import canary_check

    return lambda adapter_dir: canary_check(
        adapter_dir, config.base_model, engine=engine, device="auto", loading=config.model
    )


@task(cache_policy=NO_CACHE)
def finish_tracking(run_id: str, status: str) -> None:
    """Mark the MLflow run FINISHED or FAILED. FAILED is best effort: the flow is failing already (perhaps
    because MLflow is down), and its own error is the one to report; the run stays RUNNING then, and the next
    flow's sweep ends it as KILLED."""
    uri = Settings().mlflow_tracking_uri
    if status != "FINISHED" and not reachable(uri):
        get_run_logger().warning(
            "MLflow at %s is unreachable: run %s could not be marked %s", redact(uri), run_id, status
        )
        return
    tracking.end_run(uri, run_id, status)
