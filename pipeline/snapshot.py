"""Content-addressed dataset snapshots: parquet rows + JSON metadata, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

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


def dataset_hash(records: pd.DataFrame) -> str:
    """sha256 over the hashed columns, row order independent (rows sorted by task id)."""
    rows = records.sort_values("task_id")[list(HASHED_COLUMNS)]
    h = hashlib.sha256()
    for row in rows.itertuples(index=False):
        values = [None if pd.isna(v) else (int(v) if isinstance(v, int | float) else str(v)) for v in row]
        h.update(json.dumps(values, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def write_snapshot(
    records: pd.DataFrame,
    quarantined: pd.DataFrame,
    out_root: str | Path,
    *,
    meta: dict[str, Any],
    report_markdown: str = "",
) -> Snapshot:
    """Write `out_root/<UTC time>-<hash12>/` with snapshot.parquet, quarantine.parquet, snapshot.json and the report.

    Every pull gets its own directory (its quarantine and counts are its own even when the
    accepted rows hash the same); a temp dir is renamed into place, so a failure leaves no
    half-written snapshot.
    """
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
