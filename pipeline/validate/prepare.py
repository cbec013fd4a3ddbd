"""The validate stage's entry: validate a pull's records, reconcile the counts, split and write the snapshot."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from transformers import PreTrainedTokenizerBase

from pipeline.chat_format import load_tokenizer
from pipeline.config import PipelineConfig
from pipeline.ingest.pull import Pull
from pipeline.ingest.reconcile import Reconciliation, reconcile
from pipeline.ingest.task_store import prune_task_store
from pipeline.validate.agreement import AgreementReport, pull_agreement
from pipeline.validate.checks import ValidationResult, chat_token_counter, validate_records
from pipeline.validate.dataset_checks import category_agreement_check
from pipeline.validate.report import agreement_section, failure_table, validation_markdown, write_failure_table
from pipeline.validate.snapshot import Snapshot, write_snapshot
from pipeline.validate.unchanged import fingerprint_meta


@dataclass(frozen=True)
class PreparedDataset:
    """The validated snapshot of one pull and how every task was accounted for."""

    snapshot: Snapshot
    validation: ValidationResult
    reconciliation: Reconciliation
    # Inter-annotator agreement of the pull; None when no task has two or more annotators.
    agreement: AgreementReport | None = None


def prepare_dataset(
    pull: Pull,
    snapshots_root: str | Path,
    config: PipelineConfig | None = None,
    previous: Snapshot | None = None,
    *,
    token_checks: bool = True,
    tokenizer: PreTrainedTokenizerBase | None = None,
    input_fingerprint: str | None = None,
) -> PreparedDataset:
    """Validate the pulled records, reconcile the counts and write the snapshot with its report and failure table.

    With a config, token lengths are counted with its base model's tokenizer (as training will) and its
    validation thresholds, policies and split settings apply; `previous` enables the drift checks. The snapshot is written
    even when a check with policy `error` failed, so the report can be read; callers stop before training
    with `validation.raise_for_errors()`. `token_checks=False` skips the token-length checks (no tokenizer); `tokenizer` is the base model's, when the
    caller has already loaded it. `input_fingerprint` (pipeline/validate/unchanged.py) is recorded so that a
    later pull of the same input can reuse this snapshot.
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
    agreement, validation = _agreement(pull, validation, quarantined, split_cfg)
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
            "agreement": _agreement_meta(agreement),
            **fingerprint_meta(input_fingerprint),
        },
        report_markdown=validation_markdown(rec, quarantined, validation.checks_run, validation=validation)
        + "\n"
        + agreement_section(agreement),
        eval_fraction=split_cfg.data.eval_fraction,
        near_duplicate_threshold=split_cfg.validation.near_duplicate_threshold,
    )
    failures = failure_table(quarantined, validation.warnings, validation.dataset_checks, validation.policies)
    write_failure_table(failures, snapshot.path / "failures.parquet")
    if agreement is not None:
        write_agreement_files(agreement, snapshot.path / AGREEMENT_DIR)
    # Now that this snapshot refers to its pull's task store, stores no snapshot refers to can go.
    prune_task_store(snapshots_root)
    return PreparedDataset(snapshot=snapshot, validation=validation, reconciliation=rec, agreement=agreement)


# In the snapshot: per-annotator figures and the disagreeing tasks (the metrics are in snapshot.json).
AGREEMENT_DIR = "agreement"


def _agreement(
    pull: Pull, validation: ValidationResult, quarantined: pd.DataFrame, config: PipelineConfig
) -> tuple[AgreementReport | None, ValidationResult]:
    """The pull's agreement, and the validation result with min_category_agreement added to its dataset checks."""
    vcfg = config.validation
    agreement = pull_agreement(
        pull.annotations,
        quarantined,
        validation.valid["annotation_id"],
        n_boot=vcfg.agreement_bootstrap,
        seed=config.train.seed,
        response_threshold=vcfg.agreement_response_threshold,
    )
    check = category_agreement_check(agreement, vcfg)
    validation = replace(
        validation,
        dataset_checks=(*validation.dataset_checks, check),
        policies={**validation.policies, check.name: check.policy},
        checks_run=tuple(sorted({*validation.checks_run, f"dataset:{check.name}"})),
    )
    return agreement, validation


def _agreement_meta(agreement: AgreementReport | None) -> dict[str, Any]:
    if agreement is None:
        return {"applicable": False, "metrics": {}}
    metrics = {k: (None if math.isnan(v) else v) for k, v in agreement.metrics().items()}
    return {"applicable": True, "metrics": metrics, "files": AGREEMENT_DIR}


def write_agreement_files(agreement: AgreementReport, out_dir: Path) -> None:
    """annotators.json (per-annotator figures) and disagreements.json (task, reason), as lists of records."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in (("annotators", agreement.annotator_stats), ("disagreements", agreement.disagreements)):
        records = json.loads(frame.to_json(orient="records"))  # NaN -> null, numpy scalars -> plain numbers
        (out_dir / f"{name}.json").write_text(json.dumps(records, indent=1) + "\n")


def _concat(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Concatenate two QUARANTINE_COLUMNS frames without pandas' empty-frame dtype warnings."""
    frames = [f for f in (a, b) if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else a
