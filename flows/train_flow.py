"""The train flow, for a GPU work pool: train -> evaluate -> gate -> promote, on a snapshot named by reference.

What reaches it is a reference (snapshot path on storage both workers mount, its hash, the config as plain
data), never an in-memory object. Its work — checkpoints, adapter, the MLflow run — is keyed by
(snapshot hash, training config hash), so a rerun after a crash resumes the same work and run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows.outcomes import TrainOutcome
from flows.train_tasks import evaluate, finish_tracking, open_run, promote_adapter, train
from flows.work_dir import default_work_dir
from pipeline.config import PipelineConfig, Settings
from pipeline.track.system_metrics import system_metrics
from pipeline.track.work_runs import work_key
from pipeline.train.checkpoint import checkpoint_root
from pipeline.train.work_lock import exclusive_work
from pipeline.validate.snapshot import Snapshot, load_snapshot


def load_reference(snapshot_dir: str, snapshot_hash: str) -> Snapshot:
    """The snapshot a request names, refusing one whose content no longer has the named hash."""
    snapshot = load_snapshot(snapshot_dir)
    if snapshot.hash != snapshot_hash:
        raise ValueError(
            f"snapshot {snapshot_dir} holds dataset {snapshot.hash[:12]}, but the request named {snapshot_hash[:12]}"
        )
    return snapshot


def with_checkpoints(config: PipelineConfig) -> PipelineConfig:
    """Checkpointing is on in the train flow: orchestration.checkpoint_every_steps unless train sets its own."""
    if config.train.checkpoint_every_steps is not None:
        return config
    every = config.orchestration.checkpoint_every_steps
    return config.model_copy(update={"train": config.train.model_copy(update={"checkpoint_every_steps": every})})


@flow(name="lora-train", log_prints=True)
def train_flow(
    snapshot_dir: str,
    snapshot_hash: str,
    config: dict[str, Any],
    base_model_fingerprint: str,
    work_dir: str | None = None,
    force: bool = False,
) -> TrainOutcome:
    """Train a LoRA adapter on a snapshot, check forgetting, gate it and register it; resumable by work key."""
    cfg = with_checkpoints(PipelineConfig.model_validate(config))
    snapshot = load_reference(snapshot_dir, snapshot_hash)
    key = work_key(snapshot.hash, cfg)
    root = Path(work_dir or default_work_dir())
    work = root / "adapters" / key
    with exclusive_work(work):
        claim = open_run(cfg, snapshot, key, base_model_fingerprint, str(flow_run.id or ""), force)
        if claim.finished:
            return TrainOutcome(claim.run_id, key, str(work / "adapter"), snapshot_dir, already_trained=True)
        if force and not claim.resumed:
            # A forced retrain of finished work starts from step 0, not from that work's last checkpoint.
            shutil.rmtree(checkpoint_root(work / "adapter"), ignore_errors=True)
        uri, interval = Settings().mlflow_tracking_uri, cfg.mlflow.system_metrics_interval_s
        try:
            with system_metrics(uri, claim.run_id, interval_s=interval):
                result = train(cfg, snapshot, claim.run_id, str(work / "adapter"))
                assessment = evaluate(cfg, result, snapshot, claim.run_id)
                promotion = promote_adapter(cfg, result, assessment, snapshot, claim.run_id, str(root / "locks"))
        except BaseException:
            finish_tracking(claim.run_id, "FAILED")
            raise
        finish_tracking(claim.run_id, "FINISHED")
    return TrainOutcome(
        run_id=claim.run_id,
        work_key=key,
        adapter_dir=str(result.adapter_dir),
        snapshot_dir=snapshot_dir,
        metrics={
            "eval_loss": result.eval_loss,
            "train_loss_final": result.final_loss,
            **promotion.assessment.metrics(),
        },
        gate_passed=promotion.assessment.verdict.passed and promotion.version is not None,
        registered_version=None if promotion.version is None else str(promotion.version.version),
        resumed=claim.resumed,
    )
