"""`lora-pipeline labelstudio init|pull` against a real Label Studio server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.ingest.client import connect, ensure_project, raw_get, skip_task, submit_annotation
from pipeline.ingest.project_setup import read_prompts
from pipeline.ingest.server import LocalLabelStudio

CATS = ["billing", "shipping"]


def _table(out: str) -> list[str]:
    """The reconciliation table's lines out of the CLI output."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("tasks seen"))
    end = next(i for i, line in enumerate(lines) if line.startswith("snapshot:"))
    return lines[start:end]


@pytest.mark.slow
def test_init_imports_prompts_with_drafts_once_and_pull_prints_the_table(
    ls_env: LocalLabelStudio, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """init creates the project and imports prompts (drafts as predictions) once; pull prints the reconciliation."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"labelstudio": {"project_title": "cli-test", "categories": CATS}}))
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"Question {i}?"} for i in range(6)]
    for i in range(3):
        rows[i] |= {"response": f"Draft answer {i}.", "category": CATS[i % 2]}
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    assert main(["labelstudio", "init", "--config", str(cfg), "--prompts", str(prompts), "--drafts"]) == 0
    assert "imported 6 prompts (3 with model drafts as predictions)" in capsys.readouterr().out
    assert main(["labelstudio", "init", "--config", str(cfg), "--prompts", str(prompts), "--drafts"]) == 0
    again = capsys.readouterr().out
    assert "imported 0 prompts" in again and "6 were already in the project" in again

    client = connect(ls_env.url, ls_env.token)
    project = ensure_project(client, "cli-test", tuple(CATS))
    tasks = raw_get(client, "/api/tasks", {"project": project.id, "fields": "all", "page_size": 100})["tasks"]
    assert len(tasks) == 6
    by_prompt = {t["data"]["prompt"]: t for t in tasks}
    draft = by_prompt["Question 0?"]["predictions"]
    assert len(draft) == 1 and draft[0]["result"][0]["value"]["text"] == ["Draft answer 0."]
    assert by_prompt["Question 5?"]["predictions"] == []
    # Predictions are pre-annotations, not annotations: none of them reaches training.
    submit_annotation(client, by_prompt["Question 0?"]["id"], "Final answer.", "billing")
    submit_annotation(client, by_prompt["Question 1?"]["id"], "Spaced answer. ", "shipping")
    skip_task(client, by_prompt["Question 2?"]["id"])

    work = tmp_path / "work"
    assert main(["labelstudio", "pull", "--config", str(cfg), "--work-dir", str(work), "--no-token-checks"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("full pull of ")
    table = _table(out)
    counts = {line[:34].strip(): int(line[34:]) for line in table}
    assert counts["tasks seen"] == 6 and counts["rows accepted"] == 1 and counts["rows quarantined"] == 1
    assert counts["tasks without a usable annotation"] == 4 and counts["only_skipped"] == 1
    assert counts["no_annotation"] == 3
    assert "feedback: 1 tasks marked" in out

    pull_again = ["labelstudio", "pull", "--config", str(cfg), "--work-dir", str(work), "--no-feedback"]
    assert main([*pull_again, "--no-token-checks"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("incremental pull of ") and _table(out) == table
    # Only the task whose feedback marker was written changed; the other 5 outcomes were reused.
    assert "; 1 changed, 0 deleted, 5 reused from the last pull\n" in out

    # The UI's JSON export of the same project goes through the same code and reconciles the same.
    export = raw_get(
        client, f"/api/projects/{project.id}/export", {"export_type": "JSON", "download_all_tasks": "true"}
    )
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    assert (
        main(
            [
                "labelstudio",
                "pull",
                "--config",
                str(cfg),
                "--work-dir",
                str(tmp_path / "w2"),
                "--export-file",
                str(path),
                "--no-token-checks",
            ]
        )
        == 0
    )
    assert _table(capsys.readouterr().out) == table


def test_init_refuses_a_prompts_file_without_prompts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A CSV row without a prompt is a one-line error naming the row, before anything is contacted."""
    bad = tmp_path / "p.csv"
    bad.write_text("prompt,response\nHello?,Hi.\n,orphan answer\n")
    assert main(["labelstudio", "init", "--prompts", str(bad)]) == 2
    assert "row 3 has no non-empty string 'prompt'" in capsys.readouterr().err


def test_read_prompts_jsonl_errors_name_the_file_line(tmp_path: Path) -> None:
    """Blank lines are skipped but counted: errors name the line an editor shows."""
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "Hello?"}\n\n{"response": "orphan"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl row 3 has no non-empty string 'prompt'"):
        read_prompts(bad)
    bad.write_text('{"prompt": "Hello?"}\n{not json\n')
    with pytest.raises(ValueError, match=r"p.jsonl line 2: invalid JSON"):
        read_prompts(bad)
    bad.write_text('["prompt"]\n')
    with pytest.raises(ValueError, match=r"line 1: expected a JSON object, got list"):
        read_prompts(bad)
    good = tmp_path / "g.jsonl"
    good.write_text('{"prompt": "A?"}\n\n{"prompt": "B?", "response": "b"}\n')
    assert [r["prompt"] for r in read_prompts(good)] == ["A?", "B?"]
