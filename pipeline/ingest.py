"""Ingest stage: pull a Label Studio project, normalize, validate, reconcile and snapshot. No Prefect here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import LabelStudioConfig, Settings
from pipeline.labelstudio.client import ProjectRef, connect, ensure_project, get_project, iter_tasks
from pipeline.reconcile import Reconciliation, reconcile
from pipeline.records import NormalizedTasks, normalize_tasks
from pipeline.report import validation_markdown
from pipeline.snapshot import Snapshot, write_snapshot
from pipeline.validate import ValidationResult, validate_records


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


def pull_project(settings: Settings, cfg: LabelStudioConfig) -> Pull:
    """Connect, resolve the project (by id, else by title, creating it if missing) and pull every task."""
    client = connect(settings.label_studio_url, settings.require_label_studio_key(), timeout_s=cfg.timeout_s)
    if cfg.project_id is not None:
        project = get_project(client, cfg.project_id)
    else:
        project = ensure_project(client, cfg.project_title, cfg.categories)
    normalized = normalize_tasks(iter_tasks(client, project.id, page_size=cfg.page_size), project_id=project.id)
    # Only the URL and ids: the API key never enters metadata, logs or artifacts.
    source = {"kind": "label-studio", "url": settings.label_studio_url, "project_id": project.id}
    return Pull(project=project, source=source, normalized=normalized)


def prepare_dataset(pull: Pull, snapshots_root: str | Path) -> PreparedDataset:
    """Validate the pulled records, reconcile the counts and write the snapshot with its report."""
    validation = validate_records(pull.normalized.records, pull.project.categories)
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
            "annotation_rule": "ground truth > most recently updated submitted; skipped and drafts never count",
        },
        report_markdown=validation_markdown(rec, quarantined, validation.checks_run),
    )
    return PreparedDataset(snapshot=snapshot, validation=validation, reconciliation=rec)


def _concat(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Concatenate two QUARANTINE_COLUMNS frames without pandas' empty-frame dtype warnings."""
    frames = [f for f in (a, b) if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else a
