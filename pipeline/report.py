"""The validation report annotators and reviewers read: reconciliation counts plus one line per failure."""

from __future__ import annotations

import pandas as pd

from pipeline.reconcile import Reconciliation
from schemas.pairs import FIX_HINTS


def _cell(value: object) -> str:
    # Task text is data, not markup: escape what Markdown renderers would interpret.
    text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
    for ch in ("\\", "|", "<", ">", "`", "*", "_", "[", "]"):
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", " ")


def failure_table(quarantined: pd.DataFrame) -> pd.DataFrame:
    """Failures with a how-to-fix column, ordered by task id."""
    out = quarantined.copy()
    out["how_to_fix"] = [FIX_HINTS.get(str(c), "see the check's rule in schemas/") for c in out["check"]]
    return out.sort_values(["task_id", "check"], na_position="first").reset_index(drop=True)


def validation_markdown(rec: Reconciliation, quarantined: pd.DataFrame, checks_run: tuple[str, ...]) -> str:
    """A Markdown report: counts, then every failure with its reason and fix."""
    lines = ["# Validation report", "", "## Reconciliation", "", "```", rec.table(), "```", ""]
    lines += ["## Failures", ""]
    table = failure_table(quarantined)
    if table.empty:
        lines.append("No row failed a check.")
    else:
        lines.append("| task | annotation | stage | check | reason | value | how to fix |")
        lines.append("|---|---|---|---|---|---|---|")
        for r in table.itertuples(index=False):
            lines.append(
                "| "
                + " | ".join(
                    _cell(v) for v in (r.task_id, r.annotation_id, r.stage, r.check, r.reason, r.value, r.how_to_fix)
                )
                + " |"
            )
    lines += ["", "## Checks run", "", *[f"- `{c}`" for c in checks_run], ""]
    return "\n".join(lines)
