"""Run the row checks (pandera, lazily) and the dataset checks, then apply each check's policy.

`error` rows and datasets stop the flow before training, `quarantine` drops rows (kept with the
check's name as the reason), `warn` only reports. Nothing is dropped silently: every row that
leaves the valid set is in `quarantined`, and every warned row in `warnings`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa

from pipeline.config import PipelineConfig, ValidationConfig
from pipeline.ingest.records import QUARANTINE_COLUMNS, preview
from pipeline.validate import dataset_checks as dc
from pipeline.validate.near_duplicates import duplicate_groups
from pipeline.validate.split import split_groups
from pipeline.validate.token_lengths import TokenCounter, TokenLimits, chat_token_counter
from schemas.pairs import pair_schema

__all__ = ["TokenCounter", "ValidationFailed", "ValidationResult", "chat_token_counter", "validate_records"]
_DROP = ("quarantine", "error")


class ValidationFailed(ValueError):
    """A check with policy `error` failed: the dataset must not be trained on."""


@dataclass(frozen=True)
class ValidationResult:
    """Valid rows (coerced to the schema), dropped rows and warned rows with reasons, dataset checks."""

    valid: pd.DataFrame
    quarantined: pd.DataFrame  # QUARANTINE_COLUMNS, stage == "validate": rows removed from the dataset
    checks_run: tuple[str, ...]
    warnings: pd.DataFrame = field(default_factory=lambda: _empty_quarantine())  # rows kept, but reported
    dataset_checks: tuple[dc.DatasetCheck, ...] = ()
    rows_checked: int = 0
    policies: dict[str, str] = field(default_factory=dict)  # check name -> policy applied

    @property
    def errors(self) -> tuple[str, ...]:
        """One sentence per failed check whose policy is `error`; non-empty means: do not train."""
        out = [
            f"{self.quarantined.loc[self.quarantined['check'] == c, 'task_id'].nunique()} rows failed {c}"
            for c in sorted(set(self.quarantined["check"]))
            if self.policies.get(str(c)) == "error"
        ]
        out += [f"{d.name}: {d.detail}" for d in self.dataset_checks if not d.passed and d.policy == "error"]
        return tuple(out)

    def raise_for_errors(self) -> None:
        """Raise ValidationFailed naming every failed `error` check and where to read the report."""
        if self.errors:
            raise ValidationFailed(
                "validation failed, training stopped: "
                + "; ".join(self.errors)
                + ". Fix the data (see the validation report) or change validation.policies / thresholds."
            )


def _check_names(schema: pa.DataFrameSchema) -> tuple[str, ...]:
    names: set[str] = set()
    for name, col in schema.columns.items():
        names.update(f"{name}:{c.name}" for c in col.checks)
        if not col.nullable:
            names.add(f"{name}:not_nullable")
        if col.unique:
            names.add(f"{name}:unique")
    names.update(f"dataframe:{c.name}" for c in schema.checks)
    return tuple(sorted(names))


def _row_failures(records: pd.DataFrame, fc: pd.DataFrame) -> pd.DataFrame:
    """pandera failure cases -> one row per (record, column, check) with identity and evidence."""
    # A row-wise (dataframe) check reports every cell of a failing row; keep one line per row.
    row_wise = (fc["schema_context"] == "DataFrameSchema") | fc["column"].isna()
    fc = fc.assign(column=fc["column"].astype(object).where(~row_wise, "prompt/response"))
    fc = fc.drop_duplicates(["index", "check", "column"])
    idx = fc["index"].astype(int).to_numpy()
    rows = records.loc[idx]
    checks = [str(c).split("(")[0] for c in fc["check"]]
    checks = ["unique" if c == "field_uniqueness" else c for c in checks]
    # A row-wise (dataframe) check's failure case is one cell; the response is what the annotator fixes.
    values = [
        preview(r) if col == "prompt/response" else preview(v.item() if isinstance(v, np.generic) else v)
        for col, v, r in zip(fc["column"], fc["failure_case"], rows["response"], strict=True)
    ]
    return pd.DataFrame(
        {
            "task_id": rows["task_id"].to_numpy(),
            "annotation_id": rows["annotation_id"].to_numpy(),
            "stage": "validate",
            "check": checks,
            "reason": [f"{col}: failed {c}" for col, c in zip(fc["column"], checks, strict=True)],
            "value": values,
            "_index": idx,
        }
    )


def _dataset_rows(records: pd.DataFrame, check: dc.DatasetCheck) -> pd.DataFrame:
    idx = np.fromiter(check.rows.keys(), dtype=np.int64, count=len(check.rows))
    rows = records.loc[idx]
    return pd.DataFrame(
        {
            "task_id": rows["task_id"].to_numpy(),
            "annotation_id": rows["annotation_id"].to_numpy(),
            "stage": "validate",
            "check": check.name,
            "reason": list(check.rows.values()),
            "value": [preview(p) for p in rows["prompt"]],
            "_index": idx,
        }
    )


def validate_records(
    records: pd.DataFrame,
    categories: Sequence[str] | None,
    config: PipelineConfig | None = None,
    *,
    token_counter: TokenCounter | None = None,
    previous: pd.DataFrame | None = None,
) -> ValidationResult:
    """Validate every row and the dataset; failing rows are quarantined or warned by policy, never dropped silently.

    `token_counter` enables the token-length checks (use `chat_token_counter(load_tokenizer(...))`);
    `previous` (the last snapshot's rows) enables the drift checks.
    """
    config = config or PipelineConfig()
    vcfg: ValidationConfig = config.validation
    contract = pair_schema(categories)
    schema = pair_schema(
        categories,
        allowed_tags=vcfg.allowed_tags,
        script=vcfg.script,
        min_script_share=vcfg.min_script_share,
        max_length=config.data.max_length if token_counter else None,
        min_response_tokens=vcfg.min_response_tokens if token_counter else None,
    )
    checks = tuple(sorted({*_check_names(schema), *(f"dataset:{n}" for n in _DATASET_RULES)}))
    records = records.reset_index(drop=True)
    checked = records
    if token_counter is not None and not records.empty:
        # Exact counts where a verdict needs them; NA where the bounds prove the row within both limits.
        total, response = token_counter(records, TokenLimits(config.data.max_length, vcfg.min_response_tokens))
        checked = records.assign(n_tokens=total.astype("Int64"), n_response_tokens=response.astype("Int64"))
    elif token_counter is not None:
        checked = records.assign(n_tokens=pd.Series(dtype="Int64"), n_response_tokens=pd.Series(dtype="Int64"))
    failures = [_empty_quarantine().assign(_index=pd.Series(dtype="int64"))]
    if not records.empty:
        try:
            schema.validate(checked, lazy=True)
        except pa.errors.SchemaErrors as e:
            fc = e.failure_cases
            frame_level = fc[fc["index"].isna()]
            if not frame_level.empty:
                # Not a row's fault: the frame broke the contract (a column missing or of the wrong type).
                raise ValueError(
                    f"PairRecords do not match the data contract: {frame_level.to_dict('records')}"
                ) from None
            failures.append(_row_failures(records, fc))
    row_fail = pd.concat(failures, ignore_index=True)
    policies = {str(c): vcfg.policy(str(c)) for c in row_fail["check"].unique()}
    drop = set(row_fail.loc[row_fail["check"].map(policies).isin(_DROP), "_index"].astype(int))
    kept = records.loc[~records.index.isin(list(drop))]

    ds_checks = _dataset_stage(kept, config, previous)
    for d in ds_checks:
        policies[d.name] = d.policy
        if d.rows:
            rows = _dataset_rows(records, d)
            row_fail = pd.concat([row_fail, rows], ignore_index=True) if not row_fail.empty else rows
            if d.policy in _DROP:
                drop.update(int(i) for i in d.rows)
    is_dropped = row_fail["_index"].astype(int).isin(list(drop))
    quarantined = row_fail[is_dropped & row_fail["check"].map(policies).isin(_DROP)]
    warnings = row_fail[~row_fail.index.isin(quarantined.index)]
    final = records.loc[~records.index.isin(list(drop))]
    valid = contract.coerce_dtype(final).reset_index(drop=True)
    return ValidationResult(
        valid=valid,
        quarantined=_clean(quarantined),
        checks_run=checks,
        warnings=_clean(warnings),
        dataset_checks=tuple(ds_checks),
        rows_checked=len(records),
        policies=policies,
    )


_DATASET_RULES = (
    "min_dataset_size",
    "category_max_share",
    "category_min_rows",
    "no_duplicate_prompts",
    "no_near_duplicate_prompts",
    "no_train_eval_leakage",
    "drift_category_shares",
    "drift_length",
    "drift_vocabulary",
)


def _dataset_stage(kept: pd.DataFrame, config: PipelineConfig, previous: pd.DataFrame | None) -> list[dc.DatasetCheck]:
    """Duplicates first (they may remove rows), then size, balance, leakage and drift on what is left."""
    vcfg = config.validation
    exact, near = duplicate_groups(kept["prompt"], vcfg.near_duplicate_threshold)
    dup_checks = dc.duplicate_checks(kept, exact, near, vcfg)
    removed = {i for d in dup_checks if d.policy in _DROP for i in d.rows}
    survives = ~kept.index.isin(list(removed))
    final, near_final = kept[survives], near[survives]
    out = [*dup_checks, dc.size_check(final, vcfg), *dc.balance_checks(final, vcfg)]
    if len(final) >= 2:
        # The grouped split itself, as the snapshot will write it: no group may straddle it. The gate's leakage
        # rule compares eval rows with what this run and the champion trained on (pipeline/evaluate/leakage.py).
        is_eval = split_groups(final, config.data.eval_fraction, near_final)
        out.append(dc.leakage_check(is_eval, near_final, vcfg))
    else:
        out.append(
            dc.DatasetCheck("no_train_eval_leakage", True, vcfg.policy("no_train_eval_leakage"), "fewer than 2 rows")
        )
    out += dc.drift_checks(final, previous, vcfg)
    return out


def _clean(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.drop(columns="_index").reset_index(drop=True)
    return out if not out.empty else _empty_quarantine()


def _empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame(columns=list(QUARANTINE_COLUMNS))
