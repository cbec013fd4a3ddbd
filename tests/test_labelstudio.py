"""Against a real Label Studio server: project bootstrap, annotation pull, the winner rule, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.ingest.client import (
    LabelStudioError,
    connect,
    ensure_project,
    get_project,
    import_tasks,
    iter_tasks,
    skip_task,
    submit_annotation,
)
from pipeline.ingest.records import normalize_tasks
from pipeline.ingest.server import LabelStudioStartError, LocalLabelStudio, free_port

pytestmark = pytest.mark.slow
CATS = ("billing", "shipping")


def test_pull_turns_annotations_into_pair_records(label_studio: LocalLabelStudio) -> None:
    """Submitted annotations become records; skips and untouched tasks are accounted as unusable; later wins."""
    client = connect(label_studio.url, label_studio.token)
    project = ensure_project(client, "pull-test", CATS)
    assert project.categories == CATS
    ids = import_tasks(
        client,
        project.id,
        [{"prompt": "Where is my parcel?"}, {"prompt": "Refund?"}, {"prompt": "Hi"}, {"prompt": "?"}],
    )
    first = submit_annotation(client, ids[0], "It left the depot today.", "shipping")
    second = submit_annotation(client, ids[0], "It left the depot this morning.", "shipping")
    submit_annotation(client, ids[1], "Refunds take five days.", "billing")
    skip_task(client, ids[2])
    norm = normalize_tasks(iter_tasks(client, project.id, page_size=2), project_id=project.id)  # forces paging
    assert norm.tasks_seen == 4
    recs = norm.records.set_index("task_id")
    assert set(recs.index) == {ids[0], ids[1]}
    assert recs.loc[ids[0], "response"] == "It left the depot this morning."
    assert recs.loc[ids[0], "annotation_id"] == second != first
    assert recs.loc[ids[1], "category"] == "billing" and recs.loc[ids[1], "project_id"] == project.id
    assert dict(zip(norm.unusable["task_id"], norm.unusable["reason"], strict=True)) == {
        ids[2]: "only_skipped",
        ids[3]: "no_annotation",
    }
    # ensure_project is idempotent: the same project comes back, not a second one.
    assert ensure_project(client, "pull-test", CATS).id == project.id


def test_ground_truth_annotation_wins_over_a_newer_one(label_studio: LocalLabelStudio) -> None:
    """A ground-truth annotation beats a more recent ordinary one."""
    client = connect(label_studio.url, label_studio.token)
    project = ensure_project(client, "gt-test", CATS)
    (tid,) = import_tasks(client, project.id, [{"prompt": "Cancel order"}])
    gt = submit_annotation(client, tid, "Orders can be cancelled within an hour.", "billing", ground_truth=True)
    submit_annotation(client, tid, "Later answer.", "billing")
    norm = normalize_tasks(iter_tasks(client, project.id))
    assert norm.records["annotation_id"].tolist() == [gt]
    assert bool(norm.records["ground_truth"].iloc[0]) is True


def test_unreachable_url_is_a_one_line_error() -> None:
    """Nothing listening: the message names the URL and the variable to fix."""
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LabelStudioError, match=r"does not answer.*LABEL_STUDIO_URL") as e:
        connect(url, "x" * 40)
    assert "\n" not in str(e.value)


def test_wrong_token_is_a_one_line_error(label_studio: LocalLabelStudio) -> None:
    """A token the server rejects: the message says to set LABEL_STUDIO_API_KEY."""
    with pytest.raises(LabelStudioError, match=r"rejected the API key.*LABEL_STUDIO_API_KEY") as e:
        connect(label_studio.url, "0" * 40)
    assert "\n" not in str(e.value)


def test_missing_project_is_a_one_line_error(label_studio: LocalLabelStudio) -> None:
    """A project id that does not exist names the id and the config knob."""
    client = connect(label_studio.url, label_studio.token)
    with pytest.raises(LabelStudioError, match=r"project 987654 does not exist.*labelstudio.project_id"):
        get_project(client, 987654)


def test_label_config_without_expected_fields_is_refused(label_studio: LocalLabelStudio) -> None:
    """A project whose labeling config lacks the response TextArea is refused before any pull."""
    client = connect(label_studio.url, label_studio.token)
    xml = '<View><Text name="prompt" value="$prompt"/><Choices name="category" toName="prompt"><Choice value="a"/></Choices></View>'
    p = client.projects.create(title="wrong-config", label_config=xml)
    with pytest.raises(ValueError, match=r'needs <TextArea name="response"'):
        get_project(client, int(p.id))


def test_project_lacking_configured_categories_is_refused(label_studio: LocalLabelStudio) -> None:
    """Categories in the pipeline config that the project does not offer are an error, not a silent filter."""
    client = connect(label_studio.url, label_studio.token)
    ensure_project(client, "cats-test", ("a", "b"))
    with pytest.raises(LabelStudioError, match=r"lacks categories \['c'\]"):
        ensure_project(client, "cats-test", ("a", "b", "c"))


def test_server_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    """A label-studio executable that dies at once gives LabelStudioStartError with the log tail."""
    fake = tmp_path / "label-studio"
    fake.write_text("#!/bin/sh\necho 'boom: database is broken' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(LabelStudioStartError, match=r"exited with code 3(.|\n)*boom: database is broken"):
        LocalLabelStudio(data_dir=tmp_path / "data", executable=fake).start()


def test_busy_port_is_refused_instead_of_silently_moving(label_studio: LocalLabelStudio, tmp_path: Path) -> None:
    """Label Studio would move to port+1 on its own; we refuse so the printed URL is always right."""
    with pytest.raises(LabelStudioStartError, match="already in use"):
        LocalLabelStudio(data_dir=tmp_path, port=label_studio.port).start()
