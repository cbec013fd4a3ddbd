"""Deterministic train/eval split that holds still across snapshots, leakage-free by construction.

Rows whose prompts are exact or near duplicates form one group and always land on the same side,
so eval never scores a prompt the adapter was trained on (or a light rewording of it).

The rule (`SPLIT_RULE`, recorded in snapshot.json): every row's normalized prompt hashes (sha256, salted
with the rule's name) to a number in [0, 1); a group's key is the smallest number among its rows, and a
group is held out when its key is below `eval_fraction`. The key depends on the group's own prompts only,
not on the rest of the snapshot, so a group held out once stays held out in every later snapshot: a new
row can only lower its group's key. New groups fall on either side by the same rule, so about
`eval_fraction` of the groups are held out (a category's only group too). Two exceptions, both for small data: a category with at least
two groups but none held out gives its lowest-key group to eval, and one with every group held out gives
its highest-key group back to train (each category keeps both sides). A category that later gets a group
of its own below the threshold sends such a fallback group back to train; a new row that joins a
training group to an eval group pulls the training rows into eval. Either move is reported by the gate's
leakage rule when the champion trained on those rows (pipeline/evaluate/leakage.py).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from pipeline.validate.near_duplicates import duplicate_groups
from pipeline.validate.text_checks import normalize

DEFAULT_NEAR_DUPLICATE_THRESHOLD = 0.85
# The assignment rule's name; snapshot.json records it (older snapshots, split by a per-snapshot seed, have none).
SPLIT_RULE = "group-hash-v2"


def prompt_keys(prompts: pd.Series) -> np.ndarray:
    """Per row, a number in [0, 1) from the sha256 of its normalized prompt (salted with `SPLIT_RULE`)."""
    salt = f"{SPLIT_RULE}\n".encode()
    texts = normalize(prompts).fillna("")
    out = np.empty(len(texts), dtype=np.float64)
    for i, text in enumerate(texts):
        digest = hashlib.sha256(salt + text.encode()).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0**64
    return out


def split_groups(records: pd.DataFrame, eval_fraction: float, groups: np.ndarray) -> pd.Series:
    """Boolean Series (records' index): True for eval rows. `groups` holds one group id per row."""
    frame = pd.DataFrame(
        {
            "task_id": records["task_id"].to_numpy(),
            "group": groups,
            "cat": records["category"].astype(object).fillna(""),
            "key": prompt_keys(records["prompt"]),
        },
        index=records.index,
    ).sort_values("task_id", kind="stable")
    per_group = frame.groupby("group", sort=False).agg(key=("key", "min"), cat=("cat", "first"))
    # A group belongs to the category of its first task, so each group is placed exactly once.
    per_group["eval"] = per_group["key"] < eval_fraction
    for _, groups_of_cat in per_group.groupby("cat", sort=True):
        if len(groups_of_cat) < 2:
            continue  # a category's only group follows the rule: moving it later would break the promise above
        if not groups_of_cat["eval"].any():
            per_group.loc[groups_of_cat["key"].idxmin(), "eval"] = True
        elif groups_of_cat["eval"].all():
            per_group.loc[groups_of_cat["key"].idxmax(), "eval"] = False
    held_out = per_group.index[per_group["eval"].to_numpy()]
    return pd.Series(frame["group"].isin(held_out).to_numpy(), index=frame.index).reindex(records.index)


def eval_flags(
    records: pd.DataFrame,
    eval_fraction: float,
    *,
    near_duplicate_threshold: float = DEFAULT_NEAR_DUPLICATE_THRESHOLD,
) -> np.ndarray:
    """True for the rows (in `records`' order) held out for eval by `SPLIT_RULE`: near-duplicate groups kept on
    one side, each group's side fixed by its own prompts, each category with two or more groups on both sides."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if len(records) < 2:
        raise ValueError(f"need at least 2 rows to split into train and eval, got {len(records)}")
    records = records.reset_index(drop=True)
    _, near = duplicate_groups(records["prompt"], near_duplicate_threshold)
    return split_groups(records, eval_fraction, near).to_numpy(dtype=bool)


def partition(records: pd.DataFrame, is_eval: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, eval) rows by the `is_eval` flags, each in task-id order."""
    ordered = records.reset_index(drop=True).assign(_eval=is_eval).sort_values("task_id", kind="stable")
    train = ordered[~ordered["_eval"]].drop(columns="_eval").reset_index(drop=True)
    eval_ = ordered[ordered["_eval"]].drop(columns="_eval").reset_index(drop=True)
    return train, eval_


def split_train_eval(
    records: pd.DataFrame,
    eval_fraction: float,
    *,
    near_duplicate_threshold: float = DEFAULT_NEAR_DUPLICATE_THRESHOLD,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`eval_flags` applied: (train, eval) rows, each in task-id order."""
    return partition(records, eval_flags(records, eval_fraction, near_duplicate_threshold=near_duplicate_threshold))
