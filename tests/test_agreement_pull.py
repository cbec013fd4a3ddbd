"""Agreement wired into the pull, against a real Label Studio (overlap, three annotators) and a real MLflow server.

Three users of one organization annotate the same tasks (Label Studio 1.23 Community takes `completed_by` on
annotation create from an administrator); some disagree on the category or the response. The pull keeps every
annotation, the validation report gets the agreement section, min_category_agreement warns, the
"disagreements" tab lists exactly the disagreeing tasks (read back through the tasks API), and the metrics
land in MLflow under data/agreement/.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from label_studio_sdk import LabelStudio
from mlflow.tracking import MlflowClient

from pipeline.config import LabelStudioConfig, PipelineConfig, Settings, ValidationConfig
from pipeline.ingest.client import annotation_result, ensure_project, import_tasks, raw_get
from pipeline.ingest.export_file import pull_export_file
from pipeline.ingest.pull import pull_project
from pipeline.ingest.review_views import (
    DISAGREEMENTS_VIEW,
    READABLE_MAX_IDS,
    task_ids_filter,
    update_disagreements_view,
)
from pipeline.ingest.server import LocalLabelStudio
from pipeline.track import tracking
from pipeline.validate import agreement as ag
from pipeline.validate.prepare import AGREEMENT_DIR, prepare_dataset

pytestmark = pytest.mark.slow
CATS = ("billing", "shipping")


def _api(ls: LocalLabelStudio, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    r = httpx.request(method, f"{ls.url}{path}", headers={"Authorization": f"Token {ls.token}"}, json=body, timeout=30)
    assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text[:300]}"
    return r.json()


def _user(ls: LocalLabelStudio, name: str) -> int:
    """An annotator in the admin's organization (created once per session's server)."""
    email = f"{name}@agreement.test"
    found = [u for u in _api(ls, "GET", "/api/users/") if u.get("email") == email]
    if found:
        return int(found[0]["id"])
    return int(_api(ls, "POST", "/api/users/", {"email": email, "username": name, "first_name": name})["id"])


def _annotate(ls: LocalLabelStudio, task_id: int, user: int, response: str, category: str) -> None:
    body = {"result": annotation_result(response, category), "completed_by": user, "was_cancelled": False}
    ann = _api(ls, "POST", f"/api/tasks/{task_id}/annotations/", body)
    assert ann["completed_by"] == user


def _view_task_ids(client: LabelStudio, view_id: int) -> set[int]:
    listed = raw_get(client, "/api/tasks", {"view": view_id, "fields": "task_only", "page_size": 1000})
    return {int(t["id"]) for t in listed["tasks"]}


def _views(client: LabelStudio, project_id: int, title: str) -> list[Any]:
    return [v for v in client.views.list(project=project_id) if v.data.get("title") == title]


def test_pull_measures_agreement_report_check_view_and_mlflow(
    ls_client: LabelStudio, ls_env: LocalLabelStudio, mlflow_server: str, tmp_path: Path
) -> None:
    client, ls = ls_client, ls_env
    project = ensure_project(client, "agreement-pull-test", CATS)
    client.projects.update(id=project.id, maximum_annotations=3)  # Label Studio's overlap setting
    ann, bob, cat = (_user(ls, n) for n in ("ann", "bob", "cat"))
    prompts = ["Refund time?", "Who to call?", "Where is it?", "Fee?", "Hours?", "Parcel day?"]
    t1, t2, t3, t4, t5, t6 = import_tasks(client, project.id, [{"prompt": p} for p in prompts])
    answers = {
        t1: [(ann, "Refunds take five days.", "billing"), (bob, "Refunds take five days.", "billing"),
             (cat, "Refunds take five days.", "billing")],
        t2: [(ann, "Call the desk.", "billing"), (bob, "Call the desk.", "shipping")],  # category differs
        t3: [(ann, "It left Berlin this morning and arrives soon.", "shipping"),
             (bob, "No idea.", "shipping")],  # response ROUGE-L 0 < 0.5
        t4: [(ann, "Two euros.", "billing"), (bob, "Two euros.", "billing")],
        t5: [(ann, "Nine to five.", "billing")],  # one annotator: nothing to agree on
        t6: [(ann, "Monday.", "shipping"), (bob, "Monday.", "shipping"), (cat, "Monday.", "billing")],
    }  # fmt: skip
    for task_id, rows in answers.items():
        for user, response, category in rows:
            _annotate(ls, task_id, user, response, category)
    disagreeing = {t2, t3, t6}

    cfg = LabelStudioConfig(project_title="agreement-pull-test", categories=CATS)
    config = PipelineConfig(labelstudio=cfg, validation=ValidationConfig(min_rows=1, min_rows_per_category=1))
    root = tmp_path / "snapshots"
    pull = pull_project(Settings(), cfg, snapshots_root=root)

    # The pull keeps every annotation; the winner (one per task) is unchanged: training still gets 6 rows.
    assert pull.annotations is not None and len(pull.annotations) == 13
    assert pull.annotations.groupby("task_id")["winner"].sum().to_dict() == dict.fromkeys(answers, 1)
    assert len(pull.normalized.records) == 6
    assert set(pull.annotations["annotator"]) == {str(ann), str(bob), str(cat)}
    # The UI's JSON export, pulled from the file (`labelstudio pull --export-file`), keeps the same annotations.
    export = tmp_path / "export.json"
    export.write_text(
        json.dumps(
            raw_get(client, f"/api/projects/{project.id}/export", {"export_type": "JSON", "download_all_tasks": "true"})
        )
    )
    from_file = pull_export_file(export, cfg).annotations
    assert from_file is not None
    pd.testing.assert_frame_equal(from_file, pull.annotations)

    prepared = prepare_dataset(pull, root, config, token_checks=False)
    agreement = prepared.agreement
    assert agreement is not None
    assert set(agreement.disagreements["task_id"]) == disagreeing
    assert agreement.tasks_multi_annotated == 5 and agreement.annotators == 3
    # Alpha on the category, by hand from the count table (billing, shipping) per task with 2+ labels:
    # t1 (3,0) t2 (1,1) t3 (0,2) t4 (2,0) t6 (1,2): n = 12, n_billing = 7, n_shipping = 5,
    # observed disagreement: t2 contributes 2*1*1/(2-1) = 2, t6 2*1*2/(3-1) = 2 -> D_o = 4/12,
    # expected: (12^2 - 7^2 - 5^2) / (12*11) = 70/132 -> alpha = 1 - (4/12)/(70/132) = 1 - 44/70.
    expected_alpha = 1 - 44 / 70
    assert agreement.krippendorff_alpha.value == pytest.approx(expected_alpha, abs=1e-9)
    table = ag.category_table(pull.annotations)
    assert ag.krippendorff_alpha(table) == pytest.approx(expected_alpha, abs=1e-9)
    stats = agreement.annotator_stats.set_index("annotator")
    assert stats.loc[str(ann), "tasks"] == 6 and stats.loc[str(cat), "tasks"] == 2

    # min_category_agreement warns (alpha 0.37 < 0.6) and does not stop training.
    check = next(d for d in prepared.validation.dataset_checks if d.name == "min_category_agreement")
    assert (check.passed, check.policy, check.threshold) == (False, "warn", 0.6)
    assert check.value == pytest.approx(expected_alpha)
    assert not any("min_category_agreement" in e for e in prepared.validation.errors)
    assert "dataset:min_category_agreement" in prepared.validation.checks_run

    # The validation report has the agreement section, and the snapshot the figures and files.
    report = (prepared.snapshot.path / "validation_report.md").read_text()
    assert "## Inter-annotator agreement" in report
    assert f"| Krippendorff's alpha (category, nominal) | {expected_alpha:.3f} |" in report
    assert any(
        "category" in line and "agreement" in line and "| FAILED | warn |" in line for line in report.splitlines()
    )
    for task_id in disagreeing:
        assert f"| {task_id} | " in report
    meta = json.loads((prepared.snapshot.path / "snapshot.json").read_text())["agreement"]
    assert meta["applicable"] and meta["metrics"]["data/agreement/disagreement_tasks"] == 3
    files = prepared.snapshot.path / AGREEMENT_DIR
    assert {r["task_id"] for r in json.loads((files / "disagreements.json").read_text())} == disagreeing

    # The "disagreements" tab lists exactly the disagreeing tasks.
    view = update_disagreements_view(client, project.id, agreement.disagreements["task_id"].tolist())
    assert view is not None and view.created
    assert _view_task_ids(client, view.view_id) == disagreeing
    assert len(_views(client, project.id, "Default")) == 1  # created first: the project opens on every task

    # A reviewer settles t2 (bob now says billing) and cat joins t4 with another category: the next (incremental)
    # pull replaces the tab's filter, never adds a second tab.
    _annotate(ls, t2, cat, "Call the desk.", "billing")
    _annotate(ls, t4, cat, "Two euros.", "shipping")
    bob_t2 = next(a for a in _api(ls, "GET", f"/api/tasks/{t2}/annotations/") if a["completed_by"] == bob)
    _api(ls, "PATCH", f"/api/annotations/{bob_t2['id']}/", {"result": annotation_result("Call the desk.", "billing")})
    pull2 = pull_project(Settings(), cfg, snapshots_root=root)
    assert pull2.source["mode"] == "incremental"
    prepared2 = prepare_dataset(pull2, root, config, token_checks=False)
    assert prepared2.agreement is not None
    now_disagreeing = {t3, t4, t6}
    assert set(prepared2.agreement.disagreements["task_id"]) == now_disagreeing
    view2 = update_disagreements_view(client, project.id, prepared2.agreement.disagreements["task_id"].tolist())
    assert view2 is not None and view2.view_id == view.view_id and not view2.created
    assert len(_views(client, project.id, DISAGREEMENTS_VIEW)) == 1
    assert _view_task_ids(client, view.view_id) == now_disagreeing

    # The metrics land in MLflow under data/agreement/ when the run is created, with the annotators table.
    run_id = tracking.start_run(mlflow_server, config, prepared2.snapshot)
    mlflow = MlflowClient(mlflow_server)
    metrics = mlflow.get_run(run_id).data.metrics
    expected = prepared2.agreement.metrics()
    for key in (
        "data/agreement/category/krippendorff_alpha",
        "data/agreement/category/fleiss_kappa",
        "data/agreement/response/rouge_l_mean",
        "data/agreement/disagreement_tasks",
    ):
        assert metrics[key] == pytest.approx(expected[key]), key
    for key in (
        "data/agreement/category/krippendorff_alpha_ci_low",
        "data/agreement/category/krippendorff_alpha_ci_high",
    ):
        assert key in metrics or math.isnan(expected[key])
    artifacts = [a.path for a in mlflow.list_artifacts(run_id, "data/agreement")]
    assert artifacts == ["data/agreement/annotators.json"]
    local = mlflow.download_artifacts(run_id, "data/agreement/annotators.json", str(tmp_path))
    annotators = json.loads(Path(local).read_text())
    assert {"annotator", "tasks", "winner_agreement", "acceptance_rate", "quarantine_rate"} <= set(
        annotators["columns"]
    )
    assert len(annotators["data"]) == 3


def test_disagreements_view_without_overlap_and_beyond_the_readable_filter(ls_client: LabelStudio) -> None:
    """No overlap: no tab is created (an existing one is emptied); 250 ids: the list filter, still exact."""
    client = ls_client
    project = ensure_project(client, "agreement-view-test", CATS)
    assert update_disagreements_view(client, project.id, None) is None
    assert not _views(client, project.id, DISAGREEMENTS_VIEW)
    ids = import_tasks(client, project.id, [{"prompt": f"question {i}"} for i in range(READABLE_MAX_IDS + 50)])
    wanted = set(ids[::2]) | set(ids[-30:])
    assert len(wanted) > READABLE_MAX_IDS // 2
    big = update_disagreements_view(client, project.id, ids[: READABLE_MAX_IDS + 10])
    assert big is not None and task_ids_filter(big.task_ids)["items"][0]["operator"] == "in_list"
    assert _view_task_ids(client, big.view_id) == set(ids[: READABLE_MAX_IDS + 10])
    small = update_disagreements_view(client, project.id, sorted(wanted)[:20])
    assert small is not None and small.view_id == big.view_id
    assert _view_task_ids(client, small.view_id) == set(sorted(wanted)[:20])
    emptied = update_disagreements_view(client, project.id, None)
    assert emptied is not None and _view_task_ids(client, emptied.view_id) == set()
    assert len(_views(client, project.id, DISAGREEMENTS_VIEW)) == 1
