"""Dataset-level checks: size, category balance, duplicates, train/eval leakage, drift and annotator agreement.

They judge the rows that survived the row checks. Each returns a `DatasetCheck` named after its
rule with the measured value, the threshold and a sentence a reviewer can act on; duplicates
also name the rows involved, so the report can point at tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.config import Policy, ValidationConfig
from pipeline.validate import drift

if TYPE_CHECKING:
    from pipeline.validate.agreement import AgreementReport


@dataclass(frozen=True)
class DatasetCheck:
    """The outcome of one dataset-level rule."""

    name: str
    passed: bool
    policy: Policy
    detail: str
    value: float | None = None
    threshold: float | None = None
    # index labels of rows the rule points at, with a per-row reason (duplicates, leakage)
    rows: dict[int, str] = field(default_factory=dict)


def _category_key(records: pd.DataFrame) -> pd.Series:
    return records["category"].astype(object).where(records["category"].notna(), "<none>")


def size_check(records: pd.DataFrame, cfg: ValidationConfig) -> DatasetCheck:
    n = len(records)
    return DatasetCheck(
        "min_dataset_size",
        n >= cfg.min_rows,
        cfg.policy("min_dataset_size"),
        f"{n} rows pass the row checks; at least {cfg.min_rows} are needed",
        float(n),
        float(cfg.min_rows),
    )


def balance_checks(records: pd.DataFrame, cfg: ValidationConfig) -> list[DatasetCheck]:
    """Largest category's share, and the smallest category's row count."""
    counts = _category_key(records).value_counts()
    if counts.empty:
        share, top, low, low_name = 0.0, "-", 0, "-"
    else:
        share, top = float(counts.iloc[0] / counts.sum()), str(counts.index[0])
        low, low_name = int(counts.iloc[-1]), str(counts.index[-1])
    return [
        DatasetCheck(
            "category_max_share",
            share <= cfg.max_category_share,
            cfg.policy("category_max_share"),
            f"largest category {top!r} holds {share:.0%} of rows (limit {cfg.max_category_share:.0%})",
            share,
            cfg.max_category_share,
        ),
        DatasetCheck(
            "category_min_rows",
            counts.empty or low >= cfg.min_rows_per_category,
            cfg.policy("category_min_rows"),
            f"smallest category {low_name!r} has {low} rows (minimum {cfg.min_rows_per_category}); "
            f"counts: {', '.join(f'{k} {int(v)}' for k, v in counts.items())}",
            float(low),
            float(cfg.min_rows_per_category),
        ),
    ]


def duplicate_checks(
    records: pd.DataFrame, exact: np.ndarray, near: np.ndarray, cfg: ValidationConfig
) -> list[DatasetCheck]:
    """Exact duplicates (all but the lowest task id of each group) and near-duplicate groups."""
    task = records["task_id"].to_numpy()
    frame = pd.DataFrame({"exact": exact, "near": near, "task": task}, index=records.index)
    first_task = frame.groupby("exact")["task"].transform("min")
    dup = frame[frame["task"] != first_task]
    exact_rows = {
        int(i): f"same prompt as task {int(t)}" for i, t in zip(dup.index, first_task[dup.index], strict=True)
    }
    # near-duplicates that are not exact copies of the group's first row
    near_first = frame.groupby("near")["task"].transform("min")
    near_size = frame.groupby("near")["exact"].transform("nunique")
    near_df = frame[(near_size > 1) & (frame["task"] != near_first) & ~frame.index.isin(dup.index)]
    near_rows = {
        int(i): f"near-duplicate of task {int(t)}"
        for i, t in zip(near_df.index, near_first[near_df.index], strict=True)
    }
    n_groups = int((frame.groupby("near")["exact"].nunique() > 1).sum())
    return [
        DatasetCheck(
            "no_duplicate_prompts",
            not exact_rows,
            cfg.policy("no_duplicate_prompts"),
            f"{len(exact_rows)} rows repeat an earlier prompt (case, punctuation and spacing ignored)",
            float(len(exact_rows)),
            0.0,
            exact_rows,
        ),
        DatasetCheck(
            "no_near_duplicate_prompts",
            not near_rows,
            cfg.policy("no_near_duplicate_prompts"),
            f"{n_groups} groups of near-duplicate prompts (word 3-shingle Jaccard >= {cfg.near_duplicate_threshold}); "
            "the split keeps each group on one side",
            float(len(near_rows)),
            0.0,
            near_rows,
        ),
    ]


def leakage_check(is_eval: pd.Series, near: np.ndarray, cfg: ValidationConfig) -> DatasetCheck:
    """No near-duplicate group (exact copies included) may have rows in both train and eval."""
    sides = pd.DataFrame({"near": near, "eval": is_eval.to_numpy(dtype=bool)}, index=is_eval.index)
    mixed = sides.groupby("near")["eval"].transform("nunique") > 1
    rows = {int(i): "prompt group is in both train and eval" for i in sides.index[mixed.to_numpy()]}
    return DatasetCheck(
        "no_train_eval_leakage",
        not rows,
        cfg.policy("no_train_eval_leakage"),
        f"{len(rows)} rows belong to prompt groups split across train and eval",
        float(len(rows)),
        0.0,
        rows,
    )


def drift_checks(records: pd.DataFrame, previous: pd.DataFrame | None, cfg: ValidationConfig) -> list[DatasetCheck]:
    """Category shares, response lengths and vocabulary against the previous snapshot (passes without one)."""
    if previous is None or previous.empty or records.empty:
        why = "no previous snapshot to compare with" if previous is None or previous.empty else "no rows"
        return [
            DatasetCheck(name, True, cfg.policy(name), why)
            for name in ("drift_category_shares", "drift_length", "drift_vocabulary")
        ]
    tvd = drift.category_shift(records["category"], previous["category"])
    ks = drift.length_shift(records["response"], previous["response"])
    new = drift.new_vocabulary_share(records["response"], previous["response"])
    return [
        DatasetCheck(
            "drift_category_shares",
            tvd <= cfg.max_category_drift,
            cfg.policy("drift_category_shares"),
            f"category shares moved by {tvd:.2f} (total variation; limit {cfg.max_category_drift})",
            tvd,
            cfg.max_category_drift,
        ),
        DatasetCheck(
            "drift_length",
            ks <= cfg.max_length_drift,
            cfg.policy("drift_length"),
            f"response lengths moved by {ks:.2f} (KS statistic; limit {cfg.max_length_drift})",
            ks,
            cfg.max_length_drift,
        ),
        DatasetCheck(
            "drift_vocabulary",
            new <= cfg.max_new_vocabulary,
            cfg.policy("drift_vocabulary"),
            f"{new:.0%} of response words never occur in the previous snapshot (limit {cfg.max_new_vocabulary:.0%})",
            new,
            cfg.max_new_vocabulary,
        ),
    ]


def category_agreement_check(agreement: AgreementReport | None, cfg: ValidationConfig) -> DatasetCheck:
    """Krippendorff's alpha on the category, over tasks with two or more labels, at least the configured minimum.

    Not applicable (passes, and says so) when no task has two or more category labels: without overlap
    there is nothing to agree on. An undefined alpha (a single category throughout) passes too, with why.
    """
    name = "min_category_agreement"
    limit = cfg.min_category_agreement
    if agreement is None or agreement.category_tasks == 0:
        why = "no task has two or more annotators" if agreement is None else "no task has two or more category labels"
        return DatasetCheck(name, True, cfg.policy(name), f"not applicable: {why} (the project uses no overlap)")
    alpha = agreement.krippendorff_alpha
    if math.isnan(alpha.value):
        return DatasetCheck(
            name, True, cfg.policy(name), "not applicable: every category label is the same (alpha undefined)"
        )
    interval = (
        "" if math.isnan(alpha.ci_low) else f" ({agreement.ci:.0%} interval {alpha.ci_low:.2f} to {alpha.ci_high:.2f})"
    )
    return DatasetCheck(
        name,
        alpha.value >= limit,
        cfg.policy(name),
        f"Krippendorff's alpha on the category is {alpha.value:.2f}{interval} over {agreement.category_tasks} tasks "
        f"with two or more labels (minimum {limit}); {len(agreement.disagreements)} tasks in disagreement are "
        "listed in Label Studio's 'disagreements' view for a reviewer to settle",
        alpha.value,
        limit,
    )
