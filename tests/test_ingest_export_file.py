"""Label Studio JSON export files as a source: the same normalization and reconciliation, and a 5,000-task fuzz."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.config import LabelStudioConfig
from pipeline.ingest.client import annotation_result
from pipeline.ingest.export_file import pull_export_file, read_export_file
from pipeline.validate.prepare import prepare_dataset
from pipeline.validate.snapshot import load_snapshot

CATS = ("billing", "shipping")
CFG = LabelStudioConfig(categories=CATS)


def _ann(ann_id: int, result: Any, **kw: Any) -> dict[str, Any]:
    return {
        "id": ann_id,
        "completed_by": 1,
        "result": result,
        "was_cancelled": False,
        "ground_truth": False,
        "created_at": "2026-01-01T00:00:00.000001Z",
        "updated_at": "2026-01-01T00:00:00.000001Z",
        **kw,
    }


def _task(task_id: Any, data: Any, annotations: Any) -> dict[str, Any]:
    return {"id": task_id, "data": data, "annotations": annotations, "drafts": [], "predictions": [], "project": 7}


def _good(i: int) -> dict[str, Any]:
    return _task(i, {"prompt": f"Question {i}?"}, [_ann(i, annotation_result(f"Answer {i}.", CATS[i % 2]))])


# Each maker returns a malformed task; the key is the bucket it must land in (quarantine check or unusable reason).
def _malformed(i: int, rng: random.Random) -> tuple[dict[str, Any] | Any, str]:
    ok = annotation_result(f"Answer {i}.", "billing")
    kind = rng.randrange(16)
    if kind == 0:
        return _task(i, {"question": "no prompt key"}, [_ann(i, ok)]), "prompt_is_text"
    if kind == 1:
        return _task(i, {"prompt": rng.choice([42, None, ["a"], {"x": 1}, True])}, [_ann(i, ok)]), "prompt_is_text"
    if kind == 2:
        return _task(i, {"prompt": "Q" * 150_001}, [_ann(i, ok)]), "text_too_long"
    if kind == 3:
        return _task(i, {"prompt": "Hi\x00there\x1b[31m?"}, [_ann(i, ok)]), "no_control_characters"
    if kind == 4:
        return _task(i, {"prompt": "broken \ud800 surrogate"}, [_ann(i, ok)]), "valid_unicode"
    if kind == 5:
        bad = [{"from_name": "instruction", "to_name": "prompt", "type": "textarea", "value": {"text": ["x"]}}]
        return _task(i, {"prompt": f"Q{i}?"}, [_ann(i, bad)]), "result_matches_config"
    if kind == 6:  # results of an image-labeling config
        bad = [{"from_name": "label", "to_name": "image", "type": "rectanglelabels", "value": {"x": 1, "y": 2}}]
        return _task(i, {"prompt": f"Q{i}?"}, [_ann(i, bad)]), "result_matches_config"
    if kind == 7:
        return _task(
            i, {"prompt": f"Q{i}?"}, [_ann(i, annotation_result(rng.choice([3, None]), "billing"))]
        ), "response_is_text"  # type: ignore[arg-type]
    if kind == 8:
        return _task(rng.choice(["12", None, 1.5, True]), {"prompt": f"Q{i}?"}, [_ann(i, ok)]), "task_id_invalid"
    if kind == 9:
        return rng.choice([None, 17, "task", ["list"]]), "task_id_invalid"
    if kind == 10:  # annotations missing, not a list, or holding non-objects: each its own bucket
        bad_annotations, bucket = rng.choice(
            [(None, "no_annotation"), (5, "annotations_is_list"), ("x", "annotations_is_list"),
             ([None, 3], "annotation_is_object")]
        )  # fmt: skip
        return _task(i, None, bad_annotations), bucket
    if kind == 11:  # no result is no response; a result that is not a list is malformed
        result, bucket = rng.choice([(None, "empty_response"), ("x", "result_is_list"), ({"a": 1}, "result_is_list")])
        return _task(i, {"prompt": f"Q{i}?"}, [_ann(i, result)]), bucket
    if kind == 12:
        return _task(i, {"prompt": f"Q{i}?"}, [_ann(i, ok, was_cancelled=True)]), "only_skipped"
    if kind == 13:  # a category the project does not offer: a pandera row check
        return _task(
            i, {"prompt": f"Q{i}?"}, [_ann(i, annotation_result("A.", "weather"))]
        ), "category_in_project_choices"
    if kind == 14:  # trailing whitespace: a pandera row check
        return _task(
            i, {"prompt": f"Q{i}?"}, [_ann(i, annotation_result("A. ", "billing"))]
        ), "no_surrounding_whitespace"
    return _task(
        i,
        {"prompt": f"<script>alert({i})</script><img src=x onerror=alert(2)> http://evil.example/x"},
        [_ann(i, annotation_result("<b>bold</b> [link](javascript:alert(1))", "billing"))],
    ), "accepted"


def test_fuzz_5000_malformed_tasks_through_the_export_file_path(tmp_path: Path) -> None:
    """5,000 malformed tasks plus duplicated ids and invalid UTF-8 bytes: nothing crashes, every task lands in its bucket."""
    rng = random.Random(0)
    tasks: list[Any] = []
    expected: list[str] = []
    for i in range(1, 5001):
        t, bucket = _malformed(i, rng)
        tasks.append(t)
        expected.append(bucket)
    tasks += [_good(1), _good(2)]  # duplicated ids: the second copy of each is quarantined
    expected += ["task_id_duplicate", "task_id_duplicate"]
    tasks.append(_good(5001))
    expected.append("valid_unicode")
    raw = json.dumps(tasks).encode()
    # Invalid UTF-8 bytes inside one prompt (a broken file, not a JSON escape).
    assert raw.count(b'"Question 5001?"') == 1
    raw = raw.replace(b'"Question 5001?"', b'"Question \xff\xfe 5001?"')
    path = tmp_path / "export.json"
    path.write_bytes(raw + b"\n")

    pull = pull_export_file(path, CFG)
    prepared = prepare_dataset(pull, tmp_path / "snapshots")  # raises ReconciliationError if counts do not add up
    rec = prepared.reconciliation
    assert rec.tasks_seen == len(tasks)
    got = dict(rec.quarantined_by_check) | dict(rec.unusable_by_reason) | {"accepted": rec.accepted}
    want = pd.Series(expected).value_counts().to_dict()
    assert got == want
    snap = load_snapshot(prepared.snapshot.path)
    # Task text is data: stored verbatim, never escaped or followed; the Markdown report escapes it.
    assert (snap.records["prompt"].str.contains("<script>", regex=False)).all()
    assert "<script>" not in (prepared.snapshot.path / "validation_report.md").read_text()


def test_export_file_equals_the_same_tasks_from_memory(tmp_path: Path) -> None:
    """The file path uses the same canonical form and normalizer as API pulls."""
    from pipeline.ingest.incremental import canonical_task
    from pipeline.ingest.records import normalize_tasks

    tasks = [_good(i) for i in range(1, 30)]
    path = tmp_path / "e.json"
    path.write_text(json.dumps(tasks))
    pull = pull_export_file(path, CFG)
    direct = normalize_tasks([canonical_task(t) for t in tasks], project_id=7)
    pd.testing.assert_frame_equal(pull.normalized.records, direct.records)
    assert pull.project.id == 7 and pull.source["kind"] == "label-studio-export-file"


@pytest.mark.parametrize(
    ("content", "match"),
    [("{not json", r"is not JSON"), ('{"tasks": []}', r"holds a JSON dict, not a list of tasks")],
)
def test_export_file_that_is_not_a_task_list_is_refused(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_export_file(path)
