"""Tests for content-addressed snapshots (pipeline/validate/snapshot.py) and the train/eval split (pipeline/validate/split.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.config import PipelineConfig
from pipeline.ingest.records import records_frame
from pipeline.train.data import load_training_data
from pipeline.train.tokenized import rows_hash, source_dataset
from pipeline.validate.checks import validate_records
from pipeline.validate.snapshot import SPLIT_COLUMN, content_hash, dataset_hash, load_snapshot, write_snapshot
from pipeline.validate.split import SPLIT_RULE, split_train_eval

CATEGORIES = ("schedules", "tickets", "lost_property", "accessibility")


def row(task_id: int, category: str | None = "schedules", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "task_id": task_id,
        "annotation_id": 1000 + task_id,
        "project_id": 3,
        "prompt": f"Question {task_id}?",
        "response": f"Answer {task_id}.",
        "category": category,
        "annotator": "7",
        "updated_at": "2024-05-01T10:00:00.123456Z",
        "ground_truth": False,
        "system": None,
        "context": None,
    }
    return {**base, **overrides}


@pytest.fixture
def records() -> pd.DataFrame:
    """Six valid rows, one with system/context and one without a category."""
    rows = [row(i, CATEGORIES[i % 4]) for i in range(1, 6)]
    rows.append(row(6, None, system="Be brief.", context="Pier map"))
    return records_frame(rows)


# ---- dataset_hash ----


def test_hash_is_deterministic(records: pd.DataFrame) -> None:
    """The same rows hash the same, in a fresh frame too; the digest is sha256 hex."""
    h = dataset_hash(records)
    assert h == dataset_hash(records)
    assert h == dataset_hash(records.copy())
    assert len(h) == 64
    int(h, 16)


def test_hash_ignores_row_order_and_index(records: pd.DataFrame) -> None:
    """Shuffled rows (and their index) give the same hash: rows are sorted by task id first."""
    shuffled = records.sample(frac=1.0, random_state=1)
    assert shuffled["task_id"].tolist() != records["task_id"].tolist()
    assert dataset_hash(shuffled) == dataset_hash(records)
    assert dataset_hash(shuffled.reset_index(drop=True)) == dataset_hash(records)


@pytest.mark.parametrize(
    ("column", "value"),
    [("response", "Answer 3!"), ("prompt", "Question three?"), ("category", "tickets"), ("annotation_id", 9999)],
)
def test_hash_changes_with_learned_content(records: pd.DataFrame, column: str, value: object) -> None:
    """Changing what the model learns from (or which annotation won) changes the hash."""
    changed = records.copy()
    changed.loc[changed["task_id"] == 3, column] = value
    assert dataset_hash(changed) != dataset_hash(records)


def test_hash_distinguishes_missing_from_empty(records: pd.DataFrame) -> None:
    """A missing system prompt and an empty one are different content."""
    changed = records.copy()
    changed.loc[changed["task_id"] == 1, "system"] = ""
    assert dataset_hash(changed) != dataset_hash(records)


def test_hash_ignores_bookkeeping_columns(records: pd.DataFrame) -> None:
    """Annotator and timestamps are not learned from, so they do not change the hash."""
    changed = records.copy()
    changed["annotator"] = "someone else"
    changed["updated_at"] = pd.Timestamp("2030-01-01", tz="UTC")
    assert dataset_hash(changed) == dataset_hash(records)


# ---- write_snapshot / load_snapshot ----


def _write(records: pd.DataFrame, root: Path) -> Any:
    validation = validate_records(records, CATEGORIES)
    return write_snapshot(
        validation.valid,
        validation.quarantined,
        root,
        meta={"source": {"kind": "test", "project_id": 3}, "note": "unit test"},
        report_markdown="# Validation report\n\nhello\n",
    )


def test_write_snapshot_files_and_meta(tmp_path: Path) -> None:
    """A snapshot dir holds the parquet rows, the quarantine, snapshot.json and the report; no temp dir is left."""
    records = records_frame([row(1), row(2, "tickets"), row(3, "ferries"), row(4, prompt=" padded")])
    snap = _write(records, tmp_path / "snaps")
    assert snap.path.parent == tmp_path / "snaps"
    assert snap.path.name.endswith(snap.hash[:12])
    names = {p.name for p in snap.path.iterdir()}
    assert names == {"snapshot.parquet", "quarantine.parquet", "snapshot.json", "validation_report.md", "hf"}
    assert not list((tmp_path / "snaps").glob(".tmp-snapshot-*"))
    assert [p.name for p in (tmp_path / "snaps").iterdir()] == [snap.path.name]

    meta = json.loads((snap.path / "snapshot.json").read_text())
    assert meta["hash"] == snap.hash == dataset_hash(snap.records)
    assert meta["rows"] == 2
    assert meta["annotation_ids"] == {"1": 1001, "2": 1002}
    assert meta["source"] == {"kind": "test", "project_id": 3}
    assert meta["note"] == "unit test"
    assert "created_at" in meta
    assert snap.meta == meta

    quarantine = pd.read_parquet(snap.path / "quarantine.parquet")
    assert sorted(quarantine["task_id"].tolist()) == [3, 4]
    assert set(quarantine["stage"]) == {"validate"}
    assert (snap.path / "validation_report.md").read_text() == "# Validation report\n\nhello\n"


def test_each_pull_gets_its_own_directory(tmp_path: Path, records: pd.DataFrame) -> None:
    """Two snapshots of identical rows share a hash but not a directory."""
    a = _write(records, tmp_path)
    b = _write(records, tmp_path)
    assert a.hash == b.hash
    assert a.path != b.path
    assert a.path.is_dir() and b.path.is_dir()


def test_load_snapshot_round_trips(tmp_path: Path, records: pd.DataFrame) -> None:
    """Loading a written snapshot gives the same hash, meta and rows."""
    snap = _write(records, tmp_path)
    loaded = load_snapshot(snap.path)
    assert loaded.hash == snap.hash
    assert loaded.meta == snap.meta
    assert loaded.parquet_path == snap.path / "snapshot.parquet"
    pd.testing.assert_frame_equal(loaded.records, snap.records)


def test_load_snapshot_detects_edited_parquet(tmp_path: Path, records: pd.DataFrame) -> None:
    """Editing the rows after the fact is caught by the content hash: ValueError mentioning 'corrupted'."""
    snap = _write(records, tmp_path)
    edited = pd.read_parquet(snap.parquet_path)
    edited.loc[0, "response"] = "tampered"
    edited.to_parquet(snap.parquet_path, index=False)
    with pytest.raises(ValueError, match="corrupted"):
        load_snapshot(snap.path)


def test_load_snapshot_missing_dir(tmp_path: Path) -> None:
    """A path that is not a snapshot directory raises FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        load_snapshot(tmp_path / "does-not-exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"snapshot\.json"):
        load_snapshot(tmp_path / "empty")


# ---- split_train_eval ----


@pytest.fixture
def split_records() -> pd.DataFrame:
    """Uneven categories: 25/12/7/2 rows, one lone row, and 3 rows without a category."""
    sizes = {"schedules": 25, "tickets": 12, "lost_property": 7, "accessibility": 2, "lone": 1, None: 3}
    rows, tid = [], 1
    for category, n in sizes.items():
        for _ in range(n):
            rows.append(row(tid, category))
            tid += 1
    # rows arrive out of task-id order, as after a merge of pages
    return records_frame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


def _ids(df: pd.DataFrame) -> list[int]:
    return sorted(int(t) for t in df["task_id"])


def test_split_is_deterministic(split_records: pd.DataFrame) -> None:
    """The same rows split identically, whatever the input row order."""
    train1, eval1 = split_train_eval(split_records, 0.2)
    train2, eval2 = split_train_eval(split_records.iloc[::-1], 0.2)
    assert _ids(eval1) == _ids(eval2)
    assert _ids(train1) == _ids(train2)


def _many(n: int, start: int = 1) -> pd.DataFrame:
    rows = [
        row(t, CATEGORIES[t % len(CATEGORIES)], prompt=f"How do I ask about item {t} today?")
        for t in range(start, start + n)
    ]
    return records_frame(rows)


def test_eval_rows_stay_in_eval_as_snapshots_grow() -> None:
    """Rows held out once stay held out when later snapshots add rows (new groups, a reworded copy of an eval
    prompt, edits elsewhere); rows trained on stay in train; new groups follow the same rule."""
    first = _many(300)
    _, eval1 = split_train_eval(first, 0.1)
    reworded = row(9001, "tickets", prompt=f"{eval1['prompt'].iloc[0]}?!")  # a near duplicate of an eval row
    later = pd.concat([first, _many(300, start=301), records_frame([reworded])], ignore_index=True)
    train2, eval2 = split_train_eval(later.sample(frac=1.0, random_state=1), 0.1)
    assert set(_ids(eval1)) <= set(_ids(eval2))
    assert set(_ids(split_train_eval(first, 0.1)[0])) <= set(_ids(train2))
    assert 9001 in _ids(eval2)  # joins its group on the eval side
    # A row's side depends on its own group only: the new rows alone split as they do inside the union.
    _, eval_new = split_train_eval(_many(300, start=301), 0.1)
    assert set(_ids(eval_new)) == set(_ids(eval2)) - set(_ids(eval1)) - {9001}


@pytest.mark.parametrize("eval_fraction", [0.05, 0.1, 0.2, 0.5])
def test_eval_fraction_stays_about_right(eval_fraction: float) -> None:
    """Over 2000 distinct groups the held-out share is within 2.5 points of eval_fraction (binomial, sd < 1.2)."""
    _, eval_ = split_train_eval(_many(2000), eval_fraction)
    assert abs(len(eval_) / 2000 - eval_fraction) < 0.025


@pytest.mark.parametrize("eval_fraction", [0.05, 0.1, 0.2, 0.5, 0.9])
def test_split_partitions_and_keeps_both_sides_per_category(split_records: pd.DataFrame, eval_fraction: float) -> None:
    """Train/eval are disjoint and cover every row; each category with >=2 rows keeps >=1 row on each side;
    a lone row follows the hash rule like any other group (so its side never changes later)."""
    train, eval_ = split_train_eval(split_records, eval_fraction)
    assert set(_ids(train)).isdisjoint(_ids(eval_))
    assert sorted(_ids(train) + _ids(eval_)) == _ids(split_records)
    assert list(train.columns) == list(split_records.columns)

    key = split_records["category"].fillna("<none>")
    for category, n in key.value_counts().items():
        n_train = int((train["category"].fillna("<none>") == category).sum())
        n_eval = int((eval_["category"].fillna("<none>") == category).sum())
        assert n_train + n_eval == n
        if n >= 2:
            assert n_eval >= 1, category
            assert n_train >= 1, category


def test_split_two_rows_gives_one_each() -> None:
    """The smallest splittable input, two rows of one category, puts one row on each side."""
    train, eval_ = split_train_eval(records_frame([row(1), row(2)]), 0.1)
    assert len(train) == 1 and len(eval_) == 1


@pytest.mark.parametrize("eval_fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(split_records: pd.DataFrame, eval_fraction: float) -> None:
    """eval_fraction outside (0, 1) raises ValueError naming the knob."""
    with pytest.raises(ValueError, match="eval_fraction"):
        split_train_eval(split_records, eval_fraction)


@pytest.mark.parametrize("n", [0, 1])
def test_split_rejects_fewer_than_two_rows(n: int) -> None:
    """Fewer than two rows cannot give both a train and an eval set."""
    with pytest.raises(ValueError, match="at least 2 rows"):
        split_train_eval(records_frame([row(i) for i in range(1, n + 1)]), 0.5)


# ---- the split is frozen into the snapshot ----


def _snapshot_of(records: pd.DataFrame, root: Path, **kw: Any) -> Any:
    return write_snapshot(records, records.iloc[:0], root, meta={"source": {"kind": "test"}}, **kw)


def test_snapshot_stores_the_split_it_was_written_with(tmp_path: Path, split_records: pd.DataFrame) -> None:
    """`is_eval` is written once; train and evaluation read exactly the split of the rule snapshot.json names."""
    snap = _snapshot_of(split_records, tmp_path, eval_fraction=0.2)
    assert snap.records[SPLIT_COLUMN].dtype == bool
    expected_train, expected_eval = split_train_eval(split_records, 0.2)
    train, eval_ = load_snapshot(snap.path).split()
    # parquet reads text back as pandas' string dtype (None as nan): compare ids and learned content
    assert train["task_id"].tolist() == expected_train["task_id"].tolist()
    assert eval_["task_id"].tolist() == expected_eval["task_id"].tolist()
    assert content_hash(train) == content_hash(expected_train)
    assert content_hash(eval_) == content_hash(expected_eval)
    assert SPLIT_COLUMN not in train and SPLIT_COLUMN not in eval_
    assert snap.meta["split"] == {
        "rule": SPLIT_RULE,
        "eval_fraction": 0.2,
        "near_duplicate_threshold": 0.85,
        "train_rows": len(expected_train),
        "eval_rows": len(expected_eval),
    }


def test_snapshot_hash_covers_the_split(tmp_path: Path, split_records: pd.DataFrame) -> None:
    """Same rows, another held-out set: another snapshot hash; moving one row in the parquet is caught."""
    a = _snapshot_of(split_records, tmp_path, eval_fraction=0.2)
    b = _snapshot_of(split_records, tmp_path, eval_fraction=0.7)
    assert a.hash != b.hash
    assert content_hash(a.pairs) == content_hash(b.pairs)
    tampered = a.records.copy()
    first_train = tampered.index[~tampered[SPLIT_COLUMN]][0]
    tampered.loc[first_train, SPLIT_COLUMN] = True
    tampered.to_parquet(a.parquet_path, index=False)
    with pytest.raises(ValueError, match="corrupted"):
        load_snapshot(a.path)


def test_snapshot_split_by_the_old_rule_still_loads(tmp_path: Path, split_records: pd.DataFrame) -> None:
    """A snapshot written by the seeded rule (no `split.rule` in snapshot.json, another held-out set) loads, and
    training and evaluation read its stored split, not a recomputed one."""
    snap = _snapshot_of(split_records, tmp_path, eval_fraction=0.2)
    old = snap.records.copy()
    old[SPLIT_COLUMN] = ~old[SPLIT_COLUMN] & old["category"].notna() & (old["task_id"] % 5 == 0)
    old.to_parquet(snap.parquet_path, index=False)
    meta = json.loads((snap.path / "snapshot.json").read_text())
    del meta["split"]["rule"]
    meta["hash"] = dataset_hash(old)
    (snap.path / "snapshot.json").write_text(json.dumps(meta))
    _, eval_ = load_snapshot(snap.path).split()
    assert _ids(eval_) == sorted(int(t) for t in old.loc[old[SPLIT_COLUMN], "task_id"])


def test_snapshot_of_one_row_holds_nothing_out(tmp_path: Path) -> None:
    """A one-row snapshot is written (nothing lost); training from it says why it cannot split."""
    snap = _snapshot_of(records_frame([row(1)]), tmp_path)
    assert not snap.records[SPLIT_COLUMN].any()
    with pytest.raises(ValueError, match="holds out no rows"):
        snap.split()


def test_snapshot_without_split_column_is_refused(tmp_path: Path, split_records: pd.DataFrame) -> None:
    """A snapshot written before the split was frozen loads (its hash is the content hash) but cannot be split."""
    snap = _snapshot_of(split_records, tmp_path)
    legacy = snap.pairs
    legacy.to_parquet(snap.parquet_path, index=False)
    meta = json.loads((snap.path / "snapshot.json").read_text())
    meta["hash"] = dataset_hash(legacy)
    (snap.path / "snapshot.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="pull again"):
        load_snapshot(snap.path).split()


def test_cli_training_data_is_the_snapshot_split(tmp_path: Path, split_records: pd.DataFrame) -> None:
    """`lora-pipeline train SNAPSHOT` trains on the stored split; a config that would split otherwise is refused."""
    snap = _snapshot_of(split_records, tmp_path, eval_fraction=0.2)
    config = PipelineConfig.model_validate({"data": {"eval_fraction": 0.2}})
    train, eval_, digest = load_training_data(snap.path, config)
    expected_train, expected_eval = load_snapshot(snap.path).split()
    # The CLI reads the snapshot's memory-mapped hf/ split: the same rows, in the same order, as `split()`.
    for rows, expected in ((train, expected_train), (eval_, expected_eval)):
        assert rows["task_id"] == expected["task_id"].tolist()
        assert rows_hash(source_dataset(rows)) == rows_hash(source_dataset(expected))
    assert digest == snap.hash
    with pytest.raises(ValueError, match=r"eval_fraction: snapshot 0\.2 vs config 0\.1"):
        load_training_data(snap.path, PipelineConfig())
