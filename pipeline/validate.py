"""Run the pandera checks lazily and split PairRecords into valid rows and quarantined rows with reasons."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import pandera.pandas as pa

from pipeline.records import QUARANTINE_COLUMNS, preview
from schemas.pairs import pair_schema


@dataclass(frozen=True)
class ValidationResult:
    """Valid rows (coerced to the schema) and one quarantine row per (row, failed check)."""

    valid: pd.DataFrame
    quarantined: pd.DataFrame  # QUARANTINE_COLUMNS, stage == "validate"
    checks_run: tuple[str, ...]


def _check_names(schema: pa.DataFrameSchema) -> tuple[str, ...]:
    names: set[str] = set()
    for name, col in schema.columns.items():
        names.update(f"{name}:{c.name}" for c in col.checks)
        if not col.nullable:
            names.add(f"{name}:not_nullable")
        if col.unique:
            names.add(f"{name}:unique")
    return tuple(sorted(names))


def validate_records(records: pd.DataFrame, categories: Sequence[str] | None) -> ValidationResult:
    """Validate every row; failing rows are quarantined with the check's name, never dropped silently."""
    schema = pair_schema(categories)
    checks = _check_names(schema)
    if records.empty:
        return ValidationResult(schema.coerce_dtype(records), _empty_quarantine(), checks)
    try:
        valid = schema.validate(records, lazy=True)
        return ValidationResult(valid.reset_index(drop=True), _empty_quarantine(), checks)
    except pa.errors.SchemaErrors as e:
        fc = e.failure_cases
    frame_level = fc[fc["index"].isna()]
    if not frame_level.empty:
        # Not a row's fault: the frame broke the contract (a column missing or of the wrong type).
        raise ValueError(f"PairRecords do not match the data contract: {frame_level.to_dict('records')}")
    out = []
    for _, f in fc.iterrows():
        row = records.loc[f["index"]]
        out.append(
            {
                "task_id": int(row["task_id"]),
                "annotation_id": None if pd.isna(row["annotation_id"]) else int(row["annotation_id"]),
                "stage": "validate",
                "check": str(f["check"]).split("(")[0],
                "reason": f"{f['column']}: failed {f['check']}",
                "value": preview(f["failure_case"]),
            }
        )
    quarantined = pd.DataFrame(out, columns=list(QUARANTINE_COLUMNS))
    bad_index = set(fc["index"].astype(int))
    keep = records.loc[[i for i in records.index if i not in bad_index]]
    valid = schema.validate(keep, lazy=True).reset_index(drop=True)
    return ValidationResult(valid, quarantined, checks)


def _empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame(columns=list(QUARANTINE_COLUMNS))
