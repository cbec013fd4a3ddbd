"""Reuse the newest snapshot when a pull brought nothing new: same tasks, same settings, same code.

Validating and writing a snapshot (tokenizer, pandera, split, Arrow files) is most of a "no new
annotations" run. When the pull's normalized tables (records, quarantined, unusable tasks, every
annotator's answers) hash the same as those the newest snapshot was made from, and the project, the
config, the base model and the ingest/validate code are the same, preparing again would write the same
snapshot. The snapshot records that input as `input_fingerprint`; a pull with the same fingerprint
reuses it. The tables, not the raw task store, are hashed: the pipeline's own feedback (task data
`pipeline_feedback`, task meta) changes the stored tasks but nothing validation reads.

The annotators' feedback counts as part of making a snapshot: `mark_feedback_delivered` writes
`FEEDBACK_MARKER` once it reached Label Studio, and a snapshot without it is never reused, so a run
whose feedback failed is followed by one that sends it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

import pipeline
from pipeline.config import PipelineConfig
from pipeline.ingest.pull import Pull
from pipeline.validate.snapshot import Snapshot, latest_snapshot, load_snapshot

FEEDBACK_MARKER = "feedback_delivered.json"
_FINGERPRINT_KEY = "input_fingerprint"
# The code that turns a task store into a snapshot; a change to any of it makes every snapshot stale.
_CODE_DIRS = ("ingest", "validate")


def _code_digest() -> str:
    root = Path(pipeline.__file__).parent
    files = sorted(p for d in _CODE_DIRS for p in (root / d).rglob("*.py"))
    files += sorted((root.parent / "schemas").glob("*.py"))
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(root.parent).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _frame_digest(frames: dict[str, pd.DataFrame | None]) -> str:
    h = hashlib.sha256()
    for name, df in frames.items():
        if df is None:
            h.update(f"{name}:none\0".encode())
            continue
        h.update(f"{name}:{list(df.columns)}:{[str(t) for t in df.dtypes]}:{len(df)}\0".encode())
        if len(df):
            h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


def input_fingerprint(pull: Pull, config: PipelineConfig, base_fingerprint: str) -> str:
    """What a snapshot of this pull is made from, hashed."""
    n = pull.normalized
    tables = {
        "records": n.records,
        "quarantined": n.quarantined,
        "unusable": n.unusable,
        "annotations": pull.annotations,
    }
    data: dict[str, Any] = {
        "tables": _frame_digest(tables),
        "tasks_seen": n.tasks_seen,
        "annotation_rule": pull.source.get("annotation_rule"),
        "project": [pull.project.id, pull.project.title, list(pull.project.categories)],
        "config": config.model_dump(mode="json"),
        "base_model": base_fingerprint,
        "code": _code_digest(),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint_meta(fingerprint: str | None) -> dict[str, Any]:
    """The snapshot.json entry that records a snapshot's input fingerprint."""
    return {_FINGERPRINT_KEY: fingerprint}


def unchanged_snapshot(snapshots_root: str | Path, fingerprint: str | None) -> Snapshot | None:
    """The newest snapshot, when it was made from exactly this input, its feedback was delivered and it has no
    validation errors (validating again stops the run with the full report, as the first run did); else None."""
    if fingerprint is None:
        return None
    newest = latest_snapshot(snapshots_root)
    if newest is None or not (newest / FEEDBACK_MARKER).is_file():
        return None
    try:
        meta = json.loads((newest / "snapshot.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get(_FINGERPRINT_KEY) != fingerprint or meta.get("validation_errors"):
        return None
    return load_snapshot(newest)


def mark_feedback_delivered(snapshot_dir: str | Path, detail: dict[str, Any]) -> None:
    """Record that the snapshot's feedback reached Label Studio (or that feedback is off)."""
    path = Path(snapshot_dir) / FEEDBACK_MARKER
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(detail, indent=2, default=str))
    tmp.replace(path)
