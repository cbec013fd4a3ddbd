"""Against a real Label Studio server: an incremental pull merged into the last snapshot equals a full pull."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from label_studio_sdk import LabelStudio

from pipeline.config import LabelStudioConfig, Settings
from pipeline.ingest.client import (
    annotation_result,
    connect,
    ensure_project,
    import_tasks,
    list_task_stamps,
    skip_task,
    submit_annotation,
    updated_since_query,
)
from pipeline.ingest.pull import Pull, pull_project
from pipeline.ingest.server import LocalLabelStudio
from pipeline.validate.prepare import prepare_dataset

CATS = ("billing", "shipping")


def _frames(pull: Pull) -> dict[str, pd.DataFrame]:
    n = pull.normalized
    return {
        "records": n.records.sort_values("task_id").reset_index(drop=True),
        "quarantined": n.quarantined.sort_values(["task_id", "check"]).reset_index(drop=True),
        "unusable": n.unusable.sort_values("task_id").reset_index(drop=True),
    }


def _assert_same(a: Pull, b: Pull) -> None:
    assert a.normalized.tasks_seen == b.normalized.tasks_seen
    fa, fb = _frames(a), _frames(b)
    for name in fa:
        pd.testing.assert_frame_equal(fa[name], fb[name], obj=name)


@pytest.mark.slow
def test_incremental_pull_equals_full_pull_after_edits_deletions_new_tasks_and_skips(
    ls_client: LabelStudio, tmp_path: Path
) -> None:
    """Edits, an annotation deleted, a task deleted, new tasks, new skips, a new ground truth: merged == full."""
    client = ls_client
    project = ensure_project(client, "incremental-test", CATS)
    ids = import_tasks(client, project.id, [{"prompt": f"Question {i}?"} for i in range(30)])
    anns = {tid: submit_annotation(client, tid, f"Answer {i}.", CATS[i % 2]) for i, tid in enumerate(ids[:20])}
    skip_task(client, ids[20])
    # Small chunks and several workers: the full pull's id-range chunks are reassembled in order.
    cfg = LabelStudioConfig(project_title="incremental-test", categories=CATS, export_chunk_size=7, workers=3)
    root = tmp_path / "snapshots"

    first = pull_project(Settings(), cfg, snapshots_root=root)
    assert first.source["mode"] == "full" and first.normalized.tasks_seen == 30
    prepare_dataset(first, root)

    client.annotations.update(id=anns[ids[0]], result=annotation_result("Edited answer.", "shipping"))
    client.tasks.delete(id=str(ids[1]))
    client.annotations.delete(id=anns[ids[2]])
    skip_task(client, ids[3])  # a skip next to a submitted annotation: the submitted one still wins
    submit_annotation(client, ids[4], "The ground truth.", "billing", ground_truth=True)
    skip_task(client, ids[25])
    new = import_tasks(client, project.id, [{"prompt": "New one?"}, {"prompt": "Another?"}, {"prompt": "Third?"}])
    submit_annotation(client, new[0], "Fresh answer.", "billing")
    skip_task(client, new[1])

    incremental = pull_project(Settings(), cfg, snapshots_root=root)
    full = pull_project(Settings(), cfg, snapshots_root=root, full=True)
    assert incremental.source["mode"] == "incremental" and full.source["mode"] == "full"
    # Only the touched tasks were fetched: 0, 2, 3, 4, 25 and the 3 new ones; task 1 was found deleted.
    assert incremental.source["tasks_changed"] == 8
    assert incremental.source["tasks_deleted"] == 1 and incremental.source["listed_all_ids"] is True
    # The 24 unchanged tasks' stored outcomes were reused, not normalized again; the full pull normalized all 32.
    assert incremental.source["tasks_normalized"] == 8 and full.source["tasks_normalized"] == 32
    _assert_same(incremental, full)
    recs = incremental.normalized.records.set_index("task_id")
    assert recs.loc[ids[0], "response"] == "Edited answer." and ids[1] not in recs.index
    assert recs.loc[ids[4], "response"] == "The ground truth." and recs.loc[new[0], "response"] == "Fresh answer."
    unusable = dict(
        zip(incremental.normalized.unusable["task_id"], incremental.normalized.unusable["reason"], strict=True)
    )
    assert unusable[ids[2]] == "no_annotation" and unusable[ids[25]] == "only_skipped"
    assert unusable[new[1]] == "only_skipped" and unusable[new[2]] == "no_annotation"

    # The watermark lives in the snapshot metadata; a pull with nothing changed fetches no task.
    snap = prepare_dataset(incremental, root).snapshot
    mark = json.loads((snap.path / "snapshot.json").read_text())["source"]["watermark"]
    assert set(mark["task_ids"]) == set(ids[:1] + ids[2:] + new)
    again = pull_project(Settings(), cfg, snapshots_root=root)
    assert again.source["mode"] == "incremental" and again.source["tasks_changed"] == 0
    assert again.source["tasks_normalized"] == 0 and again.source["listed_all_ids"] is False
    _assert_same(again, full)


def _reason(pull: Pull, task_id: int) -> str:
    unusable = pull.normalized.unusable
    return str(unusable.loc[unusable["task_id"] == task_id, "reason"].item())


@pytest.mark.slow
def test_incremental_pull_catches_drafts_saved_and_removed(ls_client: LabelStudio, tmp_path: Path) -> None:
    """Saving a draft leaves `updated_at` alone; the pull still moves the task to only_drafts, and back."""
    client = ls_client
    project = ensure_project(client, "drafts-test", CATS)
    ids = import_tasks(client, project.id, [{"prompt": f"Question {i}?"} for i in range(6)])
    for i, tid in enumerate(ids[:3]):
        submit_annotation(client, tid, f"Answer {i}.", CATS[i % 2])
    cfg = LabelStudioConfig(project_title="drafts-test", categories=CATS)
    root = tmp_path / "snapshots"
    prepare_dataset(pull_project(Settings(), cfg, snapshots_root=root), root)
    before = list_task_stamps(client, project.id)

    wrapper = client._client_wrapper
    http = wrapper.httpx_client.httpx_client
    r = http.post(
        f"{wrapper.get_base_url()}/api/tasks/{ids[4]}/drafts",
        json={"result": annotation_result("Half-written.", "billing"), "lead_time": 2.0},
        headers=wrapper.get_headers(),
    )
    assert r.status_code == 201, r.text
    assert list_task_stamps(client, project.id) == before  # the gap this test is about: no stamp moved

    drafted = pull_project(Settings(), cfg, snapshots_root=root)
    assert drafted.source["mode"] == "incremental" and drafted.source["tasks_drafts_changed"] == 1
    assert drafted.source["tasks_normalized"] == 1 and _reason(drafted, ids[4]) == "only_drafts"
    _assert_same(drafted, pull_project(Settings(), cfg, snapshots_root=root, full=True))
    prepare_dataset(drafted, root)

    gone = http.delete(f"{wrapper.get_base_url()}/api/drafts/{r.json()['id']}/", headers=wrapper.get_headers())
    assert gone.status_code == 204, gone.text
    undrafted = pull_project(Settings(), cfg, snapshots_root=root)
    assert undrafted.source["tasks_drafts_changed"] == 1 and _reason(undrafted, ids[4]) == "no_annotation"
    _assert_same(undrafted, pull_project(Settings(), cfg, snapshots_root=root, full=True))
    prepare_dataset(undrafted, root)
    # Nothing changed since: the drafts check finds nothing to fetch.
    quiet = pull_project(Settings(), cfg, snapshots_root=root)
    assert quiet.source["tasks_changed"] == 0 and quiet.source["tasks_drafts_changed"] == 0


@pytest.mark.slow
def test_updated_at_filter_catches_annotation_edits_and_completed_at_does_not(label_studio: LocalLabelStudio) -> None:
    """Why the watermark filters on `updated_at`: editing an annotation moves it, but not `completed_at`."""
    client = connect(label_studio.url, label_studio.token)
    project = ensure_project(client, "filter-field-test", CATS)
    a, b = import_tasks(client, project.id, [{"prompt": "A?"}, {"prompt": "B?"}])
    ann = submit_annotation(client, a, "First.", "billing")
    submit_annotation(client, b, "Other.", "billing")
    before = list_task_stamps(client, project.id)
    mark = max(before.values())
    client.annotations.update(id=ann, result=annotation_result("Second.", "billing"))
    assert set(list_task_stamps(client, project.id, query=updated_since_query(mark))) == {a}
    completed = json.dumps(
        {
            "filters": {
                "conjunction": "and",
                "items": [
                    {"filter": "filter:tasks:completed_at", "operator": "greater", "type": "Datetime", "value": mark}
                ],
            }
        }
    )
    assert list_task_stamps(client, project.id, query=completed) == {}


def test_updated_since_query_always_sends_the_fraction_the_server_requires() -> None:
    """Label Studio answers HTTP 500 to a Datetime filter without `.%f`; a watermark on a whole second has none."""
    value = json.loads(updated_since_query("2026-01-01T10:00:00+02:00"))["filters"]["items"][0]["value"]
    assert value == "2026-01-01T08:00:00.000000Z"
