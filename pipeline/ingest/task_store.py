"""The per-task outcomes of one pull, kept on disk so that the next incremental pull reuses them.

One gzip'd JSON line per task: `{"id", "stamp", "kind", "row", "ann"}`, where `stamp` is
the task's `updated_at`, `kind`/`row` its TaskOutcome (pipeline/ingest/records.py) and `ann` every
annotator's answer (pipeline/ingest/overlap.py, for agreement). An incremental pull
copies the lines of unchanged tasks as they are and appends the tasks that changed, normalized anew (so
lines are in id order only after a full pull). Files live
under `<snapshots_root>/.labelstudio-tasks/`, are named after the sha256 of their bytes, are written
to a temporary file and renamed, and are removed once no snapshot refers to them (`prune_task_store`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson

from pipeline.ingest.overlap import annotation_rows
from pipeline.ingest.records import AnnotationRule, TaskOutcome, normalize_task
from pipeline.ingest.task_checks import task_problem

STORE_DIR = ".labelstudio-tasks"
# Bump when the line layout or what normalization produces changes: stores of another format are not
# reused (the next pull is a full one). 4: strict types at the boundary (task_checks), canonical UTC updated_at.
# 5: every annotator's answer per task (`ann`).
STORE_FORMAT = 5
# Unreferenced files younger than this may belong to a pull whose snapshot is still being written.
PRUNE_GRACE_S = 3600.0


@dataclass(frozen=True)
class StoredTask:
    """One task's line in a store: its id, `updated_at`, outcome, the line's bytes as written, and its
    annotators' answers (pipeline/ingest/overlap.py ROW_FIELDS)."""

    id: int
    stamp: str | None
    outcome: TaskOutcome
    line: bytes
    annotations: list[list[Any]] = field(default_factory=list)


def stored_task(task: dict[str, Any], *, project_id: int, rule: AnnotationRule) -> StoredTask:
    """Normalize one canonical task (integer id) into its store line."""
    outcome = normalize_task(task, project_id=project_id, rule=rule)
    stamp = task.get("updated_at") if isinstance(task.get("updated_at"), str) else None
    # A task whose fields have the wrong types (quarantined by task_checks) has no answers to compare.
    readable = outcome.kind != "quarantined" or task_problem(task, task["id"]) is None
    ann = annotation_rows(task, rule, single_responses=False) if readable else []
    item = {"id": task["id"], "stamp": stamp, "kind": outcome.kind, "row": outcome.row, "ann": ann}
    try:
        line = orjson.dumps(item, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        # Lone surrogates in a quarantined value: the stdlib escapes them (\ud800), which stays storable.
        line = (json.dumps(item, ensure_ascii=True) + "\n").encode()
    return StoredTask(id=task["id"], stamp=stamp, outcome=outcome, line=line, annotations=ann)


def _parse_line(line: bytes) -> StoredTask:
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError:
        item = json.loads(line)  # a line the stdlib wrote with escaped lone surrogates
    outcome = TaskOutcome(item["kind"], item["row"])
    return StoredTask(id=item["id"], stamp=item["stamp"], outcome=outcome, line=line, annotations=item["ann"])


def read_store(path: Path) -> Iterator[StoredTask]:
    """The tasks of an earlier pull's store, in the order they were written."""
    with gzip.open(path, "rb") as f:
        for line in f:
            yield _parse_line(line)


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class StoreWriter:
    """Writes a pull's store as tasks stream past; renamed into place under its content hash on success.

    Use as a context manager: on an exception the temporary file is removed and nothing is left behind.
    """

    directory: Path
    project_id: int
    name: str | None = None  # set when the store is complete
    sha256: str | None = None
    task_ids: list[int] = field(default_factory=list)
    _tmp: Path | None = field(default=None, repr=False)
    _raw: IO[bytes] | None = field(default=None, repr=False)
    _gz: gzip.GzipFile | None = field(default=None, repr=False)

    def __enter__(self) -> StoreWriter:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
        self._tmp = Path(tmp)
        self._raw = os.fdopen(fd, "wb")
        # mtime=0 and no file name: identical contents give identical bytes, hence the same name.
        self._gz = gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=self._raw, mtime=0)
        return self

    def write(self, item: StoredTask) -> None:
        assert self._gz is not None, "StoreWriter.write outside its `with` block"
        self._gz.write(item.line)
        self.task_ids.append(item.id)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._gz is not None and self._raw is not None and self._tmp is not None
        try:
            self._gz.close()
            self._raw.close()
            if exc_type is None:
                self.sha256 = file_sha256(self._tmp)
                self.name = f"project-{self.project_id}-{self.sha256[:16]}.jsonl.gz"
                os.replace(self._tmp, self.directory / self.name)
        finally:
            self._tmp.unlink(missing_ok=True)


def referenced_store_files(snapshots_root: Path) -> set[str]:
    """Names of the store files that existing snapshots under `snapshots_root` refer to."""
    names: set[str] = set()
    for snap in snapshots_root.iterdir():
        meta_file = snap / "snapshot.json"
        if snap.name.startswith(".") or not meta_file.is_file():
            continue
        watermark = (json.loads(meta_file.read_text()).get("source") or {}).get("watermark") or {}
        if isinstance(watermark.get("tasks_file"), str):
            names.add(watermark["tasks_file"])
    return names


def prune_task_store(snapshots_root: str | Path, *, grace_s: float = PRUNE_GRACE_S) -> list[Path]:
    """Remove store files (and leftover temporary files) that no snapshot refers to; returns what was removed.

    A file is kept while any snapshot's watermark names it, and so is any file younger than `grace_s`:
    a pull running beside this one may not have written the snapshot that will refer to it yet.
    """
    root = Path(snapshots_root)
    store = root / STORE_DIR
    if not store.is_dir():
        return []
    keep = referenced_store_files(root)
    cutoff = time.time() - grace_s
    removed: list[Path] = []
    for path in sorted(store.iterdir()):
        if path.name in keep or not path.is_file() or path.stat().st_mtime > cutoff:
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed
