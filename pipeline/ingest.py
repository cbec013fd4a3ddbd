"""Ingest stage: pull a Label Studio project, normalize, validate, reconcile and snapshot. No Prefect here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import LabelStudioConfig, PipelineConfig, Settings
from pipeline.labelstudio.client import ProjectRef, connect, ensure_project, get_project
from pipeline.labelstudio.task_store import prune_task_store
from pipeline.modeling import load_tokenizer
from pipeline.reconcile import Reconciliation, reconcile
from pipeline.records import NormalizedTasks
from pipeline.report import failure_table, validation_markdown, write_failure_table
from pipeline.snapshot import Snapshot, write_snapshot
from pipeline.validate import ValidationResult, chat_token_counter, validate_records


@dataclass(frozen=True)
class Pull:
    """One pull of a project: the project and its normalized tasks."""

    project: ProjectRef
    source: dict[str, Any]
    normalized: NormalizedTasks


@dataclass(frozen=True)
class PreparedDataset:
    """The validated snapshot of one pull and how every task was accounted for."""

    snapshot: Snapshot
    validation: ValidationResult
    reconciliation: Reconciliation


def pull_project(
    settings: Settings, cfg: LabelStudioConfig, *, snapshots_root: str | Path | None = None, full: bool = False
) -> Pull:
    """Connect, resolve the project (by id, else by title, creating it if missing) and pull every task.

    With `snapshots_root` the pull is incremental from the newest snapshot's watermark (unless
    `full` or `cfg.incremental` is off); see pipeline/incremental.py.
    """
    from pipeline.http_retry import RetryPolicy
    from pipeline.labelstudio.pull import pull_tasks

    policy = RetryPolicy(retries=cfg.retries, backoff_s=cfg.backoff_s)
    client = connect(
        settings.label_studio_url, settings.require_label_studio_key(), timeout_s=cfg.timeout_s, policy=policy
    )
    if cfg.project_id is not None:
        project = get_project(client, cfg.project_id)
    else:
        project = ensure_project(client, cfg.project_title, cfg.categories)
    # Only the URL and ids: the API key never enters metadata, logs or artifacts.
    pulled = pull_tasks(client, settings.label_studio_url, project.id, cfg, snapshots_root=snapshots_root, full=full)
    return Pull(project=project, source=pulled.source, normalized=pulled.normalized)


def prepare_dataset(
    pull: Pull,
    snapshots_root: str | Path,
    config: PipelineConfig | None = None,
    previous: Snapshot | None = None,
) -> PreparedDataset:
    """Validate the pulled records, reconcile the counts and write the snapshot with its report and failure table.

    With a config, token lengths are counted with its base model's tokenizer (as training will) and its
    validation thresholds and policies apply; `previous` enables the drift checks. The snapshot is written
    even when a check with policy `error` failed, so the report can be read; callers stop before training
    with `validation.raise_for_errors()`.
    """
    counter = chat_token_counter(load_tokenizer(config.base_model)) if config is not None else None
    validation = validate_records(
        pull.normalized.records,
        pull.project.categories,
        config,
        token_counter=counter,
        previous=previous.records if previous is not None else None,
    )
    quarantined = _concat(pull.normalized.quarantined, validation.quarantined)
    rec = reconcile(pull.normalized.tasks_seen, validation.valid, quarantined, pull.normalized.unusable)
    snapshot = write_snapshot(
        validation.valid,
        quarantined,
        snapshots_root,
        meta={
            "source": pull.source,
            "project_title": pull.project.title,
            "categories": list(pull.project.categories),
            "reconciliation": rec.as_dict(),
            "unusable": pull.normalized.unusable.to_dict("records"),
            "checks_run": list(validation.checks_run),
            "dataset_checks": [
                {"name": d.name, "passed": d.passed, "policy": d.policy, "value": d.value, "detail": d.detail}
                for d in validation.dataset_checks
            ],
            "validation_errors": list(validation.errors),
            "previous_snapshot": str(previous.path) if previous is not None else None,
            "annotation_rule": "ground truth > most recently updated submitted; skipped and drafts never count",
        },
        report_markdown=validation_markdown(rec, quarantined, validation.checks_run, validation=validation),
    )
    failures = failure_table(quarantined, validation.warnings, validation.dataset_checks, validation.policies)
    write_failure_table(failures, snapshot.path / "failures.parquet")
    # Now that this snapshot refers to its pull's task store, stores no snapshot refers to can go.
    prune_task_store(snapshots_root)
    return PreparedDataset(snapshot=snapshot, validation=validation, reconciliation=rec)


def _concat(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Concatenate two QUARANTINE_COLUMNS frames without pandas' empty-frame dtype warnings."""
    frames = [f for f in (a, b) if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else a
