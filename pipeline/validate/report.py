"""The validation report annotators and reviewers read: a summary, dataset checks, counts and one line per failure.

The failure table (task, annotation, check, policy, reason, shortened value, how to fix) is the
one artifact everything else consumes: `failures.parquet` in the snapshot, the MLflow run's
`validation/` artifacts, the Prefect table artifact and the feedback to annotators. The table keeps
each value's `repr()` preview as evidence; the Markdown report shows it with invisible characters
as the same markers the annotators' feedback panel uses (validate/visible_text.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from pipeline.ingest.reconcile import Reconciliation
from pipeline.ingest.records import NORMALIZE_HINTS
from pipeline.validate.visible_text import visible_preview
from schemas.pairs import FIX_HINTS

if TYPE_CHECKING:
    from pipeline.validate.agreement import AgreementReport
    from pipeline.validate.checks import ValidationResult
    from pipeline.validate.dataset_checks import DatasetCheck

FAILURE_COLUMNS: tuple[str, ...] = (
    "task_id",
    "annotation_id",
    "stage",
    "check",
    "policy",
    "reason",
    "value",
    "how_to_fix",
)
# The Markdown report lists this many failures; the parquet table always holds all of them.
MARKDOWN_MAX_FAILURES = 500


def _cell(value: object) -> str:
    # Task text is data, not markup: escape what Markdown renderers would interpret.
    text = "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)
    for ch in ("\\", "|", "<", ">", "`", "*", "_", "[", "]"):
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", " ")


def failure_table(
    quarantined: pd.DataFrame,
    warnings: pd.DataFrame | None = None,
    dataset_checks: Sequence[DatasetCheck] = (),
    policies: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Every failure with its policy and a how-to-fix column, ordered by task id (dataset-wide failures first)."""
    policies = policies or {}
    parts = []
    if not quarantined.empty:
        q = quarantined.copy()
        q["policy"] = [policies.get(str(c), "quarantine") for c in q["check"]]
        parts.append(q)
    if warnings is not None and not warnings.empty:
        parts.append(warnings.assign(policy="warn"))
    # Dataset checks that failed without pointing at rows (size, balance, drift) get one row each.
    wide = [
        {"task_id": None, "annotation_id": None, "stage": "dataset", "check": d.name, "policy": d.policy,
         "reason": d.detail, "value": "" if d.value is None else f"{d.value:.4g}"}
        for d in dataset_checks
        if not d.passed and not d.rows
    ]  # fmt: skip
    if wide:
        parts.append(pd.DataFrame(wide))
    if not parts:
        return pd.DataFrame(columns=list(FAILURE_COLUMNS))
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    out["task_id"] = out["task_id"].astype("Int64")
    out["annotation_id"] = out["annotation_id"].astype("Int64")
    hints = {**FIX_HINTS, **NORMALIZE_HINTS}
    out["how_to_fix"] = [hints.get(str(c), "see the check's rule in schemas/") for c in out["check"]]
    out = out.sort_values(["task_id", "check"], na_position="first").reset_index(drop=True)
    return out[list(FAILURE_COLUMNS)]


def write_failure_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the failure table as parquet (nullable ids stay integers)."""
    p = Path(path)
    table.astype({"task_id": "Int64", "annotation_id": "Int64"}).to_parquet(p, index=False)
    return p


def validation_summary(result: ValidationResult) -> str:
    """Rows checked/passed, quarantined and warned per check, dataset checks passed/failed: for the CLI and logs."""
    q, w = result.quarantined, result.warnings
    lines = [
        f"{'rows checked':<34}{result.rows_checked:>8}",
        f"{'rows passed':<34}{len(result.valid):>8}",
        f"{'rows quarantined':<34}{q['task_id'].nunique():>8}",
    ]
    # Each quarantined row counts once, under its first failing check, as in the reconciliation table;
    # rows that also failed a check are noted beside it, so the two tables always agree.
    first = q.drop_duplicates("task_id")["check"].value_counts()
    every = q.drop_duplicates(["task_id", "check"])["check"].value_counts()
    for check in sorted(every.index, key=str):
        n, also = int(first.get(check, 0)), int(every[check]) - int(first.get(check, 0))
        note = f"  (+{also} counted under another check)" if also else ""
        lines.append(f"{'  ' + str(check):<34}{n:>8}{note}")
    lines.append(f"{'rows with warnings (kept)':<34}{w['task_id'].nunique():>8}")
    for check, n in sorted(w.drop_duplicates(["task_id", "check"])["check"].value_counts().items()):
        lines.append(f"{'  ' + str(check):<34}{n:>8}")
    passed = sum(d.passed for d in result.dataset_checks)
    lines.append(f"{'dataset checks passed / failed':<34}{passed:>4} / {len(result.dataset_checks) - passed}")
    for d in result.dataset_checks:
        if not d.passed:
            lines.append(f"  FAILED {d.name} [{d.policy}]: {d.detail}")
    for e in result.errors:
        lines.append(f"ERROR (training stops): {e}")
    return "\n".join(lines)


def validation_markdown(
    rec: Reconciliation,
    quarantined: pd.DataFrame,
    checks_run: tuple[str, ...],
    *,
    validation: ValidationResult | None = None,
) -> str:
    """A Markdown report: summary, dataset checks, counts, then every failure with its reason and fix."""
    lines = ["# Validation report", ""]
    table = failure_table(quarantined)
    if validation is not None:
        table = failure_table(quarantined, validation.warnings, validation.dataset_checks, validation.policies)
        lines += ["## Summary", "", "```", validation_summary(validation), "```", ""]
        lines += [
            "## Dataset checks",
            "",
            "| check | result | policy | value | limit | detail |",
            "|---|---|---|---|---|---|",
        ]
        for d in validation.dataset_checks:
            value = "" if d.value is None else f"{d.value:.4g}"
            limit = "" if d.threshold is None else f"{d.threshold:.4g}"
            result = "passed" if d.passed else "FAILED"
            lines.append("| " + " | ".join(_cell(v) for v in (d.name, result, d.policy, value, limit, d.detail)) + " |")
        lines.append("")
    lines += ["## Reconciliation", "", "```", rec.table(), "```", ""]
    lines += ["## Failures", ""]
    if table.empty:
        lines.append("No row failed a check.")
    else:
        lines.append("| task | annotation | stage | check | policy | reason | value | how to fix |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in table.head(MARKDOWN_MAX_FAILURES).itertuples(index=False):
            value = visible_preview(r.value) if isinstance(r.value, str) else r.value
            cells = (r.task_id, r.annotation_id, r.stage, r.check, r.policy, r.reason, value, r.how_to_fix)
            lines.append("| " + " | ".join(_cell(v) for v in cells) + " |")
        if len(table) > MARKDOWN_MAX_FAILURES:
            lines.append(f"\n… and {len(table) - MARKDOWN_MAX_FAILURES} more failures in failures.parquet.")
    lines += ["", "## Checks run", "", *[f"- `{c}`" for c in checks_run], ""]
    return "\n".join(lines)


def agreement_section(agreement: AgreementReport | None) -> str:
    """The report's inter-annotator agreement section (pipeline/validate/agreement/), or why there is none."""
    if agreement is None:
        return (
            "## Inter-annotator agreement\n\nNot applicable: no task has two or more annotators (the project uses "
            "no overlap), so agreement cannot be measured and min_category_agreement passes as not applicable.\n"
        )
    return agreement.markdown()
