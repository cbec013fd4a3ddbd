"""Deterministic train/eval split, stratified by category, seeded by the snapshot hash, leakage-free.

Rows whose prompts are exact or near duplicates form one group and always land on the same side,
so eval never scores a prompt the adapter was trained on (or a light rewording of it).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline.validate.near_duplicates import duplicate_groups

DEFAULT_NEAR_DUPLICATE_THRESHOLD = 0.85


def split_groups(records: pd.DataFrame, eval_fraction: float, seed_hex: str, groups: np.ndarray) -> pd.Series:
    """Boolean Series (records' index): True for eval rows. `groups` holds one group id per row."""
    rng = np.random.default_rng(int(seed_hex[:16], 16))
    frame = pd.DataFrame(
        {
            "task_id": records["task_id"].to_numpy(),
            "group": groups,
            "cat": records["category"].astype(object).fillna(""),
        },
        index=records.index,
    ).sort_values("task_id", kind="stable")
    # A group belongs to the category of its first task, so each group is placed exactly once.
    home = frame.groupby("group", sort=False)["cat"].transform("first")
    is_eval = pd.Series(False, index=records.index)
    for _, rows in frame.groupby(home, sort=True):
        n = len(rows)
        target = math.floor(n * eval_fraction + 0.5)
        target = max(1, min(target, n - 1)) if n >= 2 else 0  # a lone example is more useful for training
        sizes = rows.groupby("group", sort=False).size()  # groups in first-task order
        order = sizes.index.to_numpy()[rng.permutation(len(sizes))]
        picked, taken = [], 0
        for g in order:
            if taken >= target:
                break
            if taken + sizes[g] <= target:
                picked.append(g)
                taken += int(sizes[g])
        if taken == 0 and target > 0 and len(sizes) >= 2:
            smallest = sizes.sort_values(kind="stable").index[0]  # every group is bigger than the target
            picked.append(smallest)
        is_eval.loc[rows.index[rows["group"].isin(picked)]] = True
    return is_eval


def eval_flags(
    records: pd.DataFrame,
    eval_fraction: float,
    seed_hex: str,
    *,
    near_duplicate_threshold: float = DEFAULT_NEAR_DUPLICATE_THRESHOLD,
) -> np.ndarray:
    """True for the rows (in `records`' order) held out for eval: per category so each keeps its share in
    eval, near-duplicate groups kept on one side; the same rows and seed always split the same way."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if len(records) < 2:
        raise ValueError(f"need at least 2 rows to split into train and eval, got {len(records)}")
    records = records.reset_index(drop=True)
    _, near = duplicate_groups(records["prompt"], near_duplicate_threshold)
    return split_groups(records, eval_fraction, seed_hex, near).to_numpy()


def partition(records: pd.DataFrame, is_eval: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, eval) rows by the `is_eval` flags, each in task-id order."""
    ordered = records.reset_index(drop=True).assign(_eval=is_eval).sort_values("task_id", kind="stable")
    train = ordered[~ordered["_eval"]].drop(columns="_eval").reset_index(drop=True)
    eval_ = ordered[ordered["_eval"]].drop(columns="_eval").reset_index(drop=True)
    return train, eval_


def split_train_eval(
    records: pd.DataFrame,
    eval_fraction: float,
    seed_hex: str,
    *,
    near_duplicate_threshold: float = DEFAULT_NEAR_DUPLICATE_THRESHOLD,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`eval_flags` applied: (train, eval) rows, each in task-id order."""
    return partition(
        records, eval_flags(records, eval_fraction, seed_hex, near_duplicate_threshold=near_duplicate_threshold)
    )
