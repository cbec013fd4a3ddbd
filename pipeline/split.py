"""Deterministic train/eval split, stratified by category and seeded by the snapshot hash."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def split_train_eval(records: pd.DataFrame, eval_fraction: float, seed_hex: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split per category so each keeps its share in eval; the same snapshot always splits the same way."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if len(records) < 2:
        raise ValueError(f"need at least 2 rows to split into train and eval, got {len(records)}")
    rng = np.random.default_rng(int(seed_hex[:16], 16))
    eval_idx: list[int] = []
    ordered = records.sort_values("task_id")
    for _, group in ordered.groupby(ordered["category"].fillna(""), sort=True):
        n_eval = math.floor(len(group) * eval_fraction + 0.5)
        if len(group) >= 2:
            n_eval = max(1, min(n_eval, len(group) - 1))
        else:
            n_eval = 0  # a lone example is more useful for training than as an eval of one
        picks = rng.permutation(group.index.to_numpy())[:n_eval]
        eval_idx.extend(int(i) for i in picks)
    is_eval = ordered.index.isin(eval_idx)
    return ordered[~is_eval].reset_index(drop=True), ordered[is_eval].reset_index(drop=True)
