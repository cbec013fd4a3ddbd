"""The reason where the annotator works: the feedback panel, its markers, the views, and the config upgrade.

Against a real Label Studio (tests/conftest.py) and, for the panel itself, a real headless Chromium
(tests/browser.py) that logs in and reads the labeling page as an annotator would.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from pipeline.cli import main
from pipeline.ingest.client import get_project, import_tasks, raw_get, submit_annotation
from pipeline.ingest.labeling_config import (
    FEEDBACK_FIELD,
    FEEDBACK_PANEL_CLASS,
    build_labeling_config,
    check_labeling_config,
    has_feedback_panel,
    upgrade_labeling_config,
)
from pipeline.ingest.server import LocalLabelStudio
from pipeline.validate.feedback import (
    MARKER_KEY,
    PANEL_TITLE,
    feedback_filter,
    markers,
    panel_text,
    plain_reason,
    send_feedback,
)
from pipeline.validate.report import failure_table, validation_markdown
from pipeline.validate.visible_text import unpreview, visible, visible_preview
from tests.browser import chromium, login_label_studio, wait_until

CATS = ("billing", "shipping")

# The config `labelstudio init` built before the panel existed.
OLD_CONFIG = """<View>
  <Header value="Prompt"/>
  <Text name="prompt" value="$prompt"/>
  <Header value="Write the response"/>
  <TextArea name="response" toName="prompt" maxSubmissions="1" required="true"
            requiredMessage="Write the response to the prompt" rows="6" editable="true"/>
  <Header value="Category"/>
  <Choices name="category" toName="prompt" choice="single" required="true">
      <Choice value="billing"/>
      <Choice value="shipping"/>
  </Choices>
</View>"""


# ---- the marker function ----


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("It ships today.  ", "It ships today.··"),
        ("  Hello", "··Hello"),
        ("one  two", "one··two"),
        ("plain words stay plain", "plain words stay plain"),
        ("a\tb", "a→b"),
        ("line \nnext", "line·↵\nnext"),
        ("a\r\nb", "a␍↵\nb"),
        ("zero\u200bwidth", "zero⟨ZWSP⟩width"),
        ("\ufeffbom", "⟨BOM⟩bom"),
        ("join\u200dme", "join⟨ZWJ⟩me"),
        ("nul\x00", "nul␀"),
        ("esc\x1b[0m", "esc␛[0m"),
        ("del\x7f", "del␡"),
        ("c1\x85", "c1⟨U+0085⟩"),
        ("nb\u00a0sp", "nb⍽sp"),
        ("", ""),
    ],
)
def test_visible_marks_invisible_characters(text: str, shown: str) -> None:
    """Edge and doubled spaces, tabs, line ends, zero-width and control characters become visible markers."""
    assert visible(text) == shown


def test_report_previews_are_unquoted_and_marked() -> None:
    """A report's repr() preview reads as the text with markers, also when it was cut; other values as they are."""
    assert unpreview(repr("It ships today.  ")) == "It ships today.  "
    assert visible_preview(repr("It ships today.  ")) == "«It ships today.··»"
    assert visible_preview(repr("tab\there")) == "«tab→here»"
    cut = repr("a\u200b" * 80)[:119] + "…"  # cut inside an escape sequence
    shown = visible_preview(cut)
    assert shown.startswith("«a⟨ZWSP⟩a⟨ZWSP⟩") and shown.endswith("…»")
    assert visible_preview("0.3") == "0.3" and visible_preview(None) == "" and unpreview("42") is None


def test_markdown_report_shows_whitespace_with_markers() -> None:
    """The validation report's value cells use the same markers as the panel."""
    q = pd.DataFrame(
        {
            "task_id": [7],
            "annotation_id": [70],
            "stage": ["validate"],
            "check": ["no_surrounding_whitespace"],
            "reason": ["response: failed no_surrounding_whitespace"],
            "value": [repr("It ships today.  ")],
        }
    )
    from pipeline.ingest.reconcile import Reconciliation

    rec = Reconciliation(
        tasks_seen=1,
        accepted=0,
        quarantined=1,
        unusable=0,
        quarantined_by_check={"no_surrounding_whitespace": 1},
        unusable_by_reason={},
    )
    md = validation_markdown(rec, q, ("response:no_surrounding_whitespace",))
    assert "«It ships today.··»" in md
    assert failure_table(q)["value"].iloc[0] == repr("It ships today.  ")  # the parquet keeps the evidence


def test_panel_text_says_check_reason_fix_and_value() -> None:
    """The panel names the check, the reason in words, the fix and the value with its trailing spaces marked."""
    q = pd.DataFrame(
        {
            "task_id": [3, 3],
            "annotation_id": [30, 30],
            "stage": ["validate", "validate"],
            "check": ["no_surrounding_whitespace", "no_control_characters"],
            "reason": ["response: failed no_surrounding_whitespace", "response: failed no_control_characters"],
            "value": [repr("Hi.  "), repr("Hi\x00")],
        }
    )
    text = panel_text(markers(q)[3])
    assert text.startswith(f"⚠ {PANEL_TITLE}")
    assert "Check: no_surrounding_whitespace" in text and "Check: no_control_characters" in text
    assert "Why: The response starts or ends with spaces, tabs or blank lines." in text
    assert "How to fix: remove the spaces or blank lines" in text
    assert "Value: «Hi.··»" in text and "Value: «Hi␀»" in text
    assert (
        plain_reason("x", "task 5: data.system is a list, not a string")
        == "task 5: data.system is a list, not a string"
    )


# ---- the labeling config ----


def test_built_config_has_the_panel_and_upgrade_adds_it_once() -> None:
    """New projects get the panel; an old config gets it spliced in front, everything else byte for byte."""
    assert has_feedback_panel(build_labeling_config(CATS))
    assert not has_feedback_panel(OLD_CONFIG)
    upgraded, changed = upgrade_labeling_config(OLD_CONFIG)
    assert changed and has_feedback_panel(upgraded)
    assert upgraded.endswith(OLD_CONFIG.removeprefix("<View>\n"))
    assert check_labeling_config(upgraded).categories == CATS
    assert upgrade_labeling_config(upgraded) == (upgraded, False)
    odd = (
        '<View style="a>b" className=\'x\'><Text name="prompt" value="$prompt"/>'
        + OLD_CONFIG[OLD_CONFIG.index('<Header value="Write') :]
    )
    odd_up, _ = upgrade_labeling_config(odd)
    assert odd_up.startswith("<View style=\"a>b\" className='x'>\n") and has_feedback_panel(odd_up)
    with pytest.raises(ValueError, match="<Text"):
        upgrade_labeling_config("<View><Header value='x'/></View>")


def _project_with_annotations(client: LabelStudio, title: str) -> tuple[int, list[int], dict[int, list]]:
    project = client.projects.create(title=title, label_config=OLD_CONFIG)
    ids = import_tasks(client, int(project.id), [{"prompt": "Refund?"}, {"prompt": "Parcel?"}, {"prompt": "Fee?"}])
    submit_annotation(client, ids[0], "Five days.", "billing")
    submit_annotation(client, ids[1], "It ships today.  ", "shipping")
    results = {t: [a["result"] for a in client.tasks.get(id=t).annotations] for t in ids}
    return int(project.id), ids, results


@pytest.mark.slow
def test_upgrade_config_on_a_project_with_annotations(
    ls_env: LocalLabelStudio, ls_client: LabelStudio, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`init --upgrade-config` adds the panel to a project with annotations; Label Studio accepts it, all kept."""
    client = ls_client
    pid, ids, before = _project_with_annotations(client, "upgrade-config")
    # Label Studio does validate config changes against annotations: dropping the category control is refused.
    without_choices = OLD_CONFIG[: OLD_CONFIG.index('  <Header value="Category"/>')] + "</View>"
    with pytest.raises(ApiError) as refused:
        client.projects.update(id=pid, label_config=without_choices)
    assert refused.value.status_code == 400
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"labelstudio": {"project_id": pid, "categories": list(CATS)}}))

    assert main(["labelstudio", "init", "--config", str(cfg)]) == 0
    assert "labelstudio init --upgrade-config" in capsys.readouterr().out  # the hint, nothing changed
    assert client.projects.get(id=pid).label_config == OLD_CONFIG

    assert main(["labelstudio", "init", "--config", str(cfg), "--upgrade-config"]) == 0
    assert "feedback panel added" in capsys.readouterr().out
    xml = client.projects.get(id=pid).label_config
    assert has_feedback_panel(xml) and xml.endswith(OLD_CONFIG.removeprefix("<View>\n"))
    assert get_project(client, pid).categories == CATS
    assert {t: [a["result"] for a in client.tasks.get(id=t).annotations] for t in ids} == before
    # Tasks imported later need no feedback field: the panel's Header is display-only.
    (later,) = import_tasks(client, pid, [{"prompt": "Hours?"}])
    assert FEEDBACK_FIELD not in client.tasks.get(id=later).data

    assert main(["labelstudio", "init", "--config", str(cfg), "--upgrade-config"]) == 0
    assert "feedback panel present" in capsys.readouterr().out
    titles = [v.data.get("title") for v in sorted(client.views.list(project=pid), key=lambda v: v.id)]
    assert titles == ["Default", "needs fix"]


@pytest.mark.slow
def test_views_default_tab_visible_filter_and_old_view_migrated(ls_client: LabelStudio) -> None:
    """A project whose only tab is an old "needs fix" view (meta filter) gets a Default tab and the data filter."""
    client = ls_client
    pid, ids, _ = _project_with_annotations(client, "views-migrate")
    old_filter = {
        "conjunction": "and",
        "items": [{**feedback_filter(), "filter": "filter:tasks:meta", "type": "String"}],
    }
    client.views.create(project=pid, data={"title": "needs fix", "filters": old_filter})
    q = pd.DataFrame(
        {
            "task_id": [ids[1]],
            "annotation_id": [1],
            "stage": ["validate"],
            "check": ["no_surrounding_whitespace"],
            "reason": ["response: failed no_surrounding_whitespace"],
            "value": [repr("It ships today.  ")],
        }
    )
    first = send_feedback(client, pid, q)
    views = sorted(client.views.list(project=pid), key=lambda v: v.id)
    assert [v.data.get("title") for v in views] == ["needs fix", "Default"]
    assert views[0].id == first.view_id
    assert views[0].data["filters"] == {"conjunction": "and", "items": [feedback_filter()]}
    listed = raw_get(client, "/api/tasks", {"view": first.view_id, "fields": "task_only", "page_size": 100})
    assert [t["id"] for t in listed["tasks"]] == [ids[1]]
    task = client.tasks.get(id=ids[1])
    assert "«It ships today.··»" in task.data[FEEDBACK_FIELD] and task.meta[MARKER_KEY]["checks"]
    assert task.data["prompt"] == "Parcel?" and len(task.annotations) == 1  # data rewritten whole, annotation kept
    # Passing on a later pull empties the field; the view then lists nothing, and no third tab appears.
    second = send_feedback(client, pid, q.iloc[0:0])
    assert (second.marked, second.cleared) == (0, 1)
    assert client.tasks.get(id=ids[1]).data[FEEDBACK_FIELD] == ""
    assert raw_get(client, "/api/tasks", {"view": first.view_id, "fields": "task_only"})["total"] == 0
    assert len(client.views.list(project=pid)) == 2


# ---- in the browser ----


def _panel_text(driver: object) -> str:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(10):  # the labeling interface may re-render the panel while it is read
        try:
            return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, f".{FEEDBACK_PANEL_CLASS}"))  # type: ignore[attr-defined]
        except StaleElementReferenceException:
            time.sleep(0.5)
    raise AssertionError("the feedback panel kept re-rendering for 5 s")


def _open_task(driver: object, url: str, project_id: int, task_id: int, prompt: str) -> None:
    """Open the task's labeling page and wait until the labeling interface shows its prompt."""
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/projects/{project_id}/data?task={task_id}")  # type: ignore[attr-defined]
    wait_until(
        driver,
        90,
        lambda d: any(prompt in e.text for e in d.find_elements(By.CSS_SELECTOR, ".lsf-richtext, [class*=richtext]")),
    )
    time.sleep(1)  # let the rest of the interface render around the prompt


@pytest.mark.slow
def test_annotator_sees_the_reason_and_it_goes_when_fixed(
    ls_env: LocalLabelStudio, ls_client: LabelStudio, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Headless Chromium: the flagged task's labeling page shows the reason and `··`; fixed and pulled, it is gone."""
    from selenium.webdriver.common.by import By

    from tests.browser import require_chromium

    require_chromium()
    client = ls_client
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"labelstudio": {"project_title": "panel-browser", "categories": list(CATS)}}))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ("When does it ship?", "Refund?")) + "\n")
    assert main(["labelstudio", "init", "--config", str(cfg), "--prompts", str(prompts)]) == 0
    pid = next(int(p.id) for p in client.projects.list(title="panel-browser"))
    tasks = {t["data"]["prompt"]: t["id"] for t in raw_get(client, "/api/tasks", {"project": pid})["tasks"]}
    flagged, clean = tasks["When does it ship?"], tasks["Refund?"]
    ann = submit_annotation(client, flagged, "It ships today.  ", "shipping")
    submit_annotation(client, clean, "Five days.", "billing")
    work = tmp_path / "work"
    pull = ["labelstudio", "pull", "--config", str(cfg), "--work-dir", str(work), "--no-token-checks"]
    assert main(pull) == 0
    assert "feedback: 1 tasks marked" in capsys.readouterr().out

    with chromium() as driver:
        login_label_studio(driver, ls_env.url, ls_env.username, ls_env.password)
        _open_task(driver, ls_env.url, pid, flagged, "When does it ship?")
        driver.save_screenshot(str(tmp_path / "flagged-task.png"))  # type: ignore[attr-defined]
        shown = _panel_text(driver)
        assert PANEL_TITLE in shown and "no_surrounding_whitespace" in shown
        assert "starts or ends with spaces" in shown and "remove the spaces" in shown
        assert "«It ships today.··»" in shown
        _open_task(driver, ls_env.url, pid, clean, "Refund?")
        assert _panel_text(driver).strip() == ""

        # The "needs fix" tab: its filter shows in the Filters button and the reason is a column.
        views = {v.data.get("title"): v.id for v in client.views.list(project=pid)}
        assert set(views) == {"Default", "needs fix"}
        driver.get(f"{ls_env.url}/projects/{pid}/data?tab={views['needs fix']}")  # type: ignore[attr-defined]
        wait_until(driver, 90, lambda d: "Tasks: 1 / 2" in d.find_element(By.TAG_NAME, "body").text)
        buttons = [b.text for b in driver.find_elements(By.TAG_NAME, "button")]
        assert any(b.startswith("Filters") and "1" in b for b in buttons), buttons
        driver.save_screenshot(str(tmp_path / "needs-fix-tab.png"))  # type: ignore[attr-defined]
        (column,) = driver.find_elements(By.XPATH, f"//*[normalize-space(text())='{FEEDBACK_FIELD}']")
        assert column.location["x"] + 50 < driver.get_window_size()["width"]  # on screen, not scrolled off
        assert "Pipeline feedback: no_surrounding_whitespace" in driver.find_element(By.TAG_NAME, "body").text

        # The annotator fixes the response; the next pull clears the panel.
        client.annotations.update(
            id=ann, result=submit_result("It ships today.", "shipping"), was_cancelled=False, ground_truth=False
        )
        assert main(pull) == 0
        assert "1 cleared" in capsys.readouterr().out
        assert client.tasks.get(id=flagged).data[FEEDBACK_FIELD] == ""
        _open_task(driver, ls_env.url, pid, flagged, "When does it ship?")
        assert _panel_text(driver).strip() == ""
        assert "It ships today." in driver.find_element(By.TAG_NAME, "body").text  # the annotation is still there


def submit_result(response: str, category: str) -> list[dict]:
    """An annotation result in the pipeline's labeling config (the same shape submit_annotation sends)."""
    from pipeline.ingest.client import annotation_result

    return annotation_result(response, category)
