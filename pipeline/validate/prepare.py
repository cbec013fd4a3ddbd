"""The validate stage's entry: validate a pull's records, reconcile the counts, split and write the snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from transformers import PreTrainedTokenizerBase

from pipeline.chat_format import load_tokenizer
from pipeline.config import PipelineConfig
from pipeline.ingest.pull import Pull
from pipeline.ingest.reconcile import Reconciliation, reconcile
from pipeline.ingest.task_store import prune_task_store
from pipeline.validate.checks import ValidationResult, chat_token_counter, validate_records
from pipeline.validate.report import failure_table, validation_markdown, write_failure_table
from pipeline.validate.snapshot import Snapshot, write_snapshot


@dataclass(frozen=True)
class PreparedDataset:
    """The validated snapshot of one pull and how every task was accounted for."""

    snapshot: Snapshot
    validation: ValidationResult
    reconciliation: Reconciliation


def prepare_dataset(
    pull: Pull,
    snapshots_root: str | Path,
    config: PipelineConfig | None = None,
    previous: Snapshot | None = None,
    *,
    token_checks: bool = True,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> PreparedDataset:
    """Validate the pulled records, reconcile the counts and write the snapshot with its report and failure table.

    With a config, token lengths are counted with its base model's tokenizer (as training will) and its
    validation thresholds, policies and split settings apply; `previous` enables the drift checks. The snapshot is written
    even when a check with policy `error` failed, so the report can be read; callers stop before training
    with `validation.raise_for_errors()`. `token_checks=False` skips the token-length checks (no tokenizer); `tokenizer` is the base model's, when the
    caller has already loaded it.
    """
    counter = None
    if config is not None and token_checks:
        counter = chat_token_counter(
            tokenizer or load_tokenizer(config.base_model, trust_remote_code=config.model.trust_remote_code)
        )
    validation = validate_records(
        pull.normalized.records,
        pull.project.categories,
        config,
        token_counter=counter,
        previous=previous.pairs if previous is not None else None,
    )
    quarantined = _concat(pull.normalized.quarantined, validation.quarantined)
    split_cfg = config or PipelineConfig()
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
        eval_fraction=split_cfg.data.eval_fraction,
        near_duplicate_threshold=split_cfg.validation.near_duplicate_threshold,
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
