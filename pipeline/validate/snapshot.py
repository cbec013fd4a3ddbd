"""Content-addressed dataset snapshots: parquet rows + JSON metadata, written atomically, with the frozen split.

The train/eval split is decided once, when the snapshot is written (`is_eval` column, by a stable hash of
each near-duplicate group, so rows once held out stay held out in later snapshots; pipeline/validate/split.py),
and covered by the snapshot's hash: training and evaluation read it from the snapshot and never split again.
A snapshot written by an older rule (`split.rule` absent from snapshot.json) still loads with its stored split.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.validate.hf_dataset import HF_DIR, load_hf_dataset, write_hf_dataset
from pipeline.validate.split import DEFAULT_NEAR_DUPLICATE_THRESHOLD, SPLIT_RULE, eval_flags, partition

if TYPE_CHECKING:
    from datasets import Dataset

# The columns that define what the model learns from; the hash covers exactly these.
HASHED_COLUMNS: tuple[str, ...] = (
    "task_id",
    "annotation_id",
    "prompt",
    "response",
    "category",
    "system",
    "context",
)
# True for the rows held out for evaluation; part of the snapshot and of its hash.
SPLIT_COLUMN = "is_eval"
DEFAULT_EVAL_FRACTION = 0.1


@dataclass(frozen=True)
class Snapshot:
    """A written snapshot: its directory, content hash, rows and metadata."""

    path: Path
    hash: str
    records: pd.DataFrame
    meta: dict[str, Any]

    @property
    def parquet_path(self) -> Path:
        return self.path / "snapshot.parquet"

    @property
    def pairs(self) -> pd.DataFrame:
        """The accepted PairRecords, without the split column."""
        return self.records.drop(columns=SPLIT_COLUMN, errors="ignore")

    def split(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(train, eval) rows of the frozen split, each in task-id order."""
        return partition(self.pairs, self._eval_flags())

    def _eval_flags(self) -> np.ndarray:
        if SPLIT_COLUMN not in self.records:
            raise ValueError(
                f"snapshot {self.path} was written before splits were frozen into snapshots; "
                "pull again to write a snapshot that carries its train/eval split"
            )
        is_eval = self.records[SPLIT_COLUMN].to_numpy(dtype=bool)
        if not is_eval.any():
            raise ValueError(
                f"snapshot {self.path} holds out no rows for evaluation (it has {len(self.records)} rows; "
                "at least 2 are needed to split into train and eval)"
            )
        return is_eval

    def hf_split(self) -> tuple[Dataset, Dataset]:
        """(train, eval) of the frozen split as memory-mapped `datasets.Dataset`s (the snapshot's `hf/`): the rows
        `split()` gives, in the same order, without loading them into memory. Training reads these."""
        is_eval = self._eval_flags()
        ds = load_hf_dataset(self.path)
        if (ds["train"].num_rows, ds["eval"].num_rows) != (int((~is_eval).sum()), int(is_eval.sum())):
            raise ValueError(f"snapshot {self.path}: {HF_DIR}/ does not hold the snapshot's split; pull again")
        return ds["train"], ds["eval"]


def content_hash(records: pd.DataFrame) -> str:
    """sha256 over the hashed columns, row order independent (rows sorted by task id)."""
    rows = records.sort_values("task_id")[list(HASHED_COLUMNS)]
    h = hashlib.sha256()
    for row in rows.itertuples(index=False):
        values = [None if pd.isna(v) else (int(v) if isinstance(v, int | float) else str(v)) for v in row]
        h.update(json.dumps(values, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def dataset_hash(records: pd.DataFrame) -> str:
    """The snapshot's identity: the rows' content hash and, where the split column is present, which rows
    are held out (so a changed split is a changed snapshot)."""
    digest = content_hash(records)
    if SPLIT_COLUMN not in records:
        return digest
    eval_ids = np.sort(records.loc[records[SPLIT_COLUMN].to_numpy(dtype=bool), "task_id"].to_numpy(dtype=np.int64))
    h = hashlib.sha256(digest.encode())
    h.update(b"\nheld out:")
    h.update(eval_ids.tobytes())
    return h.hexdigest()


def frozen_split(records: pd.DataFrame, eval_fraction: float, near_duplicate_threshold: float) -> np.ndarray:
    """The `is_eval` flags of the split every stage reads (`SPLIT_RULE`): grouped by near-duplicate prompts, each
    group's side fixed by a hash of its own prompts; nothing is held out from fewer than 2 rows."""
    if len(records) < 2:
        return np.zeros(len(records), dtype=bool)
    return eval_flags(records, eval_fraction, near_duplicate_threshold=near_duplicate_threshold)


def write_snapshot(
    records: pd.DataFrame,
    quarantined: pd.DataFrame,
    out_root: str | Path,
    *,
    meta: dict[str, Any],
    report_markdown: str = "",
    eval_fraction: float = DEFAULT_EVAL_FRACTION,
    near_duplicate_threshold: float = DEFAULT_NEAR_DUPLICATE_THRESHOLD,
) -> Snapshot:
    """Write `out_root/<UTC time>-<hash12>/` with snapshot.parquet, quarantine.parquet, snapshot.json, the report
    and `hf/`, the same rows as a Hugging Face DatasetDict (train/eval) with its dataset card.

    The train/eval split is computed here, once (`frozen_split`), and stored as the `is_eval` column.
    Every pull gets its own directory (its quarantine and counts are its own even when the
    accepted rows hash the same); a temp dir is renamed into place, so a failure leaves no
    half-written snapshot.
    """
    records = records.drop(columns=SPLIT_COLUMN, errors="ignore").reset_index(drop=True)
    records[SPLIT_COLUMN] = frozen_split(records, eval_fraction, near_duplicate_threshold)
    digest = dataset_hash(records)
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    final = root / f"{now:%Y%m%dT%H%M%S%fZ}-{digest[:12]}"
    full_meta = {
        "hash": digest,
        "created_at": now.isoformat(),
        "rows": len(records),
        "annotation_ids": {
            str(int(t)): (None if pd.isna(a) else int(a))
            for t, a in zip(records["task_id"], records["annotation_id"], strict=True)
        },
        "split": {
            "rule": SPLIT_RULE,
            "eval_fraction": eval_fraction,
            "near_duplicate_threshold": near_duplicate_threshold,
            "train_rows": int((~records[SPLIT_COLUMN]).sum()),
            "eval_rows": int(records[SPLIT_COLUMN].sum()),
        },
        **meta,
    }
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-snapshot-", dir=root))
    try:
        records.to_parquet(tmp / "snapshot.parquet", index=False)
        quarantined.astype({"task_id": "Int64", "annotation_id": "Int64"}).to_parquet(
            tmp / "quarantine.parquet", index=False
        )
        (tmp / "snapshot.json").write_text(json.dumps(full_meta, indent=2, default=str))
        (tmp / "validation_report.md").write_text(report_markdown)
        write_hf_dataset(tmp / HF_DIR, records.drop(columns=SPLIT_COLUMN), records[SPLIT_COLUMN], full_meta)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Snapshot(path=final, hash=digest, records=records, meta=full_meta)


def load_snapshot(path: str | Path) -> Snapshot:
    """Read a snapshot directory back, checking its content hash."""
    p = Path(path)
    meta_file = p / "snapshot.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{p} is not a snapshot directory (no snapshot.json)")
    meta = json.loads(meta_file.read_text())
    records = pd.read_parquet(p / "snapshot.parquet")
    digest = dataset_hash(records)
    if digest != meta.get("hash"):
        raise ValueError(
            f"snapshot {p} is corrupted: content hash {digest[:12]} != recorded {str(meta.get('hash'))[:12]}"
        )
    return Snapshot(path=p, hash=digest, records=records, meta=meta)


def latest_snapshot(snapshots_root: str | Path) -> Path | None:
    """The newest snapshot directory under `snapshots_root` (names start with their UTC time), or None."""
    root = Path(snapshots_root)
    if not root.is_dir():
        return None
    dirs = sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "snapshot.json").is_file()
    )
    return dirs[-1] if dirs else None


def previous_snapshot(snapshots_root: str | Path) -> Snapshot | None:
    """The newest snapshot under `snapshots_root`, loaded (the drift checks compare against it), or None."""
    newest = latest_snapshot(snapshots_root)
    return load_snapshot(newest) if newest is not None else None
