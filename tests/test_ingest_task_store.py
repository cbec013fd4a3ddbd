"""The task store an incremental pull reuses (pipeline/ingest/task_store.py), without a server.

Reusing stored outcomes must give exactly what normalizing every task again gives; the store must
be atomic and content-addressed; pruning must never remove what a snapshot refers to.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.ingest.incremental import Changes, Watermark, kept_tasks, previous_watermark
from pipeline.ingest.records import OutcomeCollector, normalize_tasks
from pipeline.ingest.task_store import (
    STORE_DIR,
    StoredTask,
    StoreWriter,
    file_sha256,
    prune_task_store,
    read_store,
    stored_task,
)
from tests.test_records import annotation, task

URL = "http://127.0.0.1:8080"


def _tasks() -> list[dict[str, Any]]:
    """Tasks landing in every bucket: records, a skip, no annotation, quarantined prompt and response."""
    return [
        task(1, [annotation(11)]),
        task(2, [annotation(12, was_cancelled=True, result=[])]),
        task(3, []),
        task(4, [annotation(14)], prompt=None),
        task(5, [annotation(15, response="bad \x00 byte")]),
        task(6, [annotation(16, category=None)]),
    ]


def _write_store(directory: Path, tasks: list[dict[str, Any]]) -> StoreWriter:
    with StoreWriter(directory, 3) as store:
        for t in tasks:
            store.write(stored_task(t, project_id=3, rule="latest"))
    return store


def _frames_equal(a: Any, b: Any) -> None:
    assert a.tasks_seen == b.tasks_seen
    pd.testing.assert_frame_equal(a.records, b.records)
    pd.testing.assert_frame_equal(a.quarantined, b.quarantined)
    pd.testing.assert_frame_equal(a.unusable, b.unusable)


def test_reusing_stored_outcomes_equals_normalizing_every_task_again(tmp_path: Path) -> None:
    """Kept lines + the changed tasks normalized anew == normalize_tasks over the current tasks, row for row."""
    before = _tasks()
    store = _write_store(tmp_path, before)
    assert store.name is not None
    # Task 1 edited, task 3 annotated, task 4 deleted, task 7 new.
    now = {t["id"]: t for t in before if t["id"] != 4}
    now[1] = task(1, [annotation(21, response="Edited.", updated_at="2024-06-01T00:00:00Z")])
    now[3] = task(3, [annotation(23)])
    now[7] = task(7, [annotation(27)])
    changes = Changes(fetch=[1, 3, 7], deleted={4}, listed_all_ids=True)

    collector = OutcomeCollector()
    kept = list(kept_tasks(read_store(tmp_path / store.name), changes))
    assert [t.id for t in kept] == [2, 5, 6]  # only these were reused, not normalized again
    for item in kept + [stored_task(now[i], project_id=3, rule="latest") for i in changes.fetch]:
        collector.add(item.outcome)
    merged = collector.result(sort_by_task_id=True)

    full = normalize_tasks([now[i] for i in sorted(now)], project_id=3)
    _frames_equal(merged, full)
    assert merged.records.set_index("task_id").loc[1, "response"] == "Edited."


def test_store_lines_round_trip_including_lone_surrogates(tmp_path: Path) -> None:
    """A value orjson cannot encode (a lone surrogate, quarantined) is stored by the stdlib and read back."""
    tasks = [*_tasks(), task(8, [annotation(18)], prompt="bad \ud800 text")]
    store = _write_store(tmp_path, tasks)
    assert store.name is not None
    back = list(read_store(tmp_path / store.name))
    assert [t.id for t in back] == [t["id"] for t in tasks]
    collector = OutcomeCollector()
    for item in back:
        collector.add(item.outcome)
    _frames_equal(collector.result(), normalize_tasks(tasks, project_id=3))
    assert back[-1].outcome.kind == "quarantined" and back[-1].outcome.row["check"] == "valid_unicode"


def test_store_is_content_addressed_and_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    first, second = _write_store(tmp_path, _tasks()), _write_store(tmp_path, _tasks())
    assert first.name == second.name and first.sha256 == file_sha256(tmp_path / str(first.name))
    assert _write_store(tmp_path, _tasks()[:3]).name != first.name

    with pytest.raises(RuntimeError, match="network down"), StoreWriter(tmp_path / "other", 3) as store:
        store.write(stored_task(_tasks()[0], project_id=3, rule="latest"))
        raise RuntimeError("network down")
    assert list((tmp_path / "other").iterdir()) == []


def _snapshot(root: Path, name: str, tasks_file: str | None, *, rule: str = "latest", **extra: Any) -> Path:
    snap = root / name
    snap.mkdir(parents=True)
    watermark = None
    if tasks_file is not None:
        path = root / STORE_DIR / tasks_file
        watermark = (
            Watermark(
                as_of="2024-06-01T00:00:00Z",
                task_ids=[1],
                tasks_file=tasks_file,
                tasks_sha256=file_sha256(path) if path.is_file() else "0" * 64,
                annotation_rule=rule,
            ).as_dict()
            | extra
        )
    source = {"kind": "label-studio", "url": URL, "project_id": 3, "watermark": watermark}
    (snap / "snapshot.json").write_text(json.dumps({"source": source}))
    return snap


def test_previous_watermark_is_not_reused_for_another_rule_format_or_a_damaged_store(tmp_path: Path) -> None:
    store = _write_store(tmp_path / STORE_DIR, _tasks())
    assert store.name is not None
    _snapshot(tmp_path, "20240601T000000000000Z-aaaa", store.name)
    mark = previous_watermark(tmp_path, URL, 3, "latest")
    assert mark is not None and mark.tasks_file == store.name
    assert previous_watermark(tmp_path, URL, 3, "majority") is None  # outcomes depend on the rule
    assert previous_watermark(tmp_path, URL, 4, "latest") is None  # another project

    _snapshot(tmp_path, "20240602T000000000000Z-bbbb", store.name, store_format=1)
    assert previous_watermark(tmp_path, URL, 3, "latest") is None  # the newest snapshot's store is of another format

    _snapshot(tmp_path, "20240603T000000000000Z-cccc", store.name)
    with (tmp_path / STORE_DIR / store.name).open("ab") as f:
        f.write(b"tampered")
    assert previous_watermark(tmp_path, URL, 3, "latest") is None


def test_prune_removes_only_store_files_no_snapshot_refers_to(tmp_path: Path) -> None:
    """Referenced files stay whatever their age; unreferenced ones go once older than the grace period."""
    store_dir = tmp_path / STORE_DIR
    names = []
    for n in (2, 3, 4, 5):  # four different stores
        s = _write_store(store_dir, _tasks()[:n])
        assert s.name is not None
        names.append(s.name)
    current, previous, orphan, fresh_orphan = names
    _snapshot(tmp_path, "20240601T000000000000Z-aaaa", previous)
    _snapshot(tmp_path, "20240602T000000000000Z-bbbb", current)
    leftover = store_dir / ".tmp-abc123"  # a pull killed half-way
    leftover.write_bytes(b"partial")
    old = time.time() - 7200
    for name in (current, previous, orphan):
        os.utime(store_dir / name, (old, old))
    os.utime(leftover, (old, old))

    removed = prune_task_store(tmp_path, grace_s=3600)

    assert sorted(p.name for p in removed) == sorted([orphan, leftover.name])
    assert sorted(p.name for p in store_dir.iterdir()) == sorted([current, previous, fresh_orphan])
    assert previous_watermark(tmp_path, URL, 3, "latest") is not None
    assert prune_task_store(tmp_path / "nowhere") == []


def test_stored_task_keeps_the_task_stamp_for_the_overlap_window() -> None:
    item: StoredTask = stored_task(
        {**task(9, [annotation(19)]), "updated_at": "2024-06-01T00:00:01.5Z"}, project_id=3, rule="latest"
    )
    assert item.stamp == "2024-06-01T00:00:01.5Z" and item.outcome.kind == "record"
    assert json.loads(item.line)["row"]["task_id"] == 9
