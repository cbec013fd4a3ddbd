"""`lora-pipeline labelstudio init`: read prompts (JSONL/CSV), import them once, optionally with model drafts.

Drafts from a model are imported as predictions (pre-annotations): annotators see the draft in the
TextArea and edit it instead of typing from scratch. Predictions never reach training; only
submitted annotations do (pipeline/ingest/records.py).

`upgrade_project_config` (`init --upgrade-config`) adds the feedback panel to a project created
before it existed; Label Studio validates the change against the project's annotations.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from pipeline.ingest.client import LabelStudioError, annotation_result, raw_get
from pipeline.ingest.labeling_config import PROMPT_NAME, has_feedback_panel, upgrade_labeling_config
from pipeline.jsonl import read_jsonl_objects

# Task data fields the pipeline reads; `response`/`category` are the optional model draft.
DATA_FIELDS = ("prompt", "system", "context")
DRAFT_FIELDS = ("response", "category")


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl or .csv file; each needs a non-empty string `prompt`. Errors name the line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompts file {p} does not exist")
    if p.suffix.lower() == ".csv":
        with p.open(newline="", encoding="utf-8") as f:
            numbered = list(enumerate((dict(r) for r in csv.DictReader(f)), start=2))  # row 1 is the header
    elif p.suffix.lower() in (".jsonl", ".ndjson"):
        numbered = read_jsonl_objects(p, str(p))
    else:
        raise ValueError(f"prompts file {p} must end in .jsonl or .csv")
    for n, row in numbered:
        prompt = row.get(PROMPT_NAME)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{p} row {n} has no non-empty string 'prompt' field: {sorted(row)}")
    rows = [row for _, row in numbered]
    return rows


@dataclass(frozen=True)
class ImportSummary:
    """What `init` imported."""

    imported: int
    already_present: int
    with_drafts: int


def existing_prompts(client: LabelStudio, project_id: int) -> set[str]:
    """Prompts already imported into the project, so that re-running init imports nothing twice."""
    out: set[str] = set()
    page = 1
    while True:
        body = raw_get(
            client,
            "/api/tasks",
            {"project": project_id, "fields": "task_only", "include": "id,data", "page_size": 5000, "page": page},
        )
        for t in body["tasks"]:
            prompt = (t.get("data") or {}).get(PROMPT_NAME)
            if isinstance(prompt, str):
                out.add(prompt)
        if page * 5000 >= int(body["total"]) or not body["tasks"]:
            return out
        page += 1


def import_prompts(
    client: LabelStudio,
    project_id: int,
    rows: list[dict[str, Any]],
    *,
    with_drafts: bool = False,
    model_version: str = "draft",
    batch_size: int = 500,
) -> ImportSummary:
    """Import prompts not yet in the project; with `with_drafts`, rows' `response`/`category` become predictions."""
    present = existing_prompts(client, project_id)
    payloads: list[dict[str, Any]] = []
    drafts = 0
    for row in rows:
        if row[PROMPT_NAME] in present:
            continue
        present.add(row[PROMPT_NAME])
        item: dict[str, Any] = {"data": {k: row[k] for k in DATA_FIELDS if isinstance(row.get(k), str) and row[k]}}
        response = row.get("response")
        if with_drafts and isinstance(response, str) and response:
            category = row.get("category") if isinstance(row.get("category"), str) and row.get("category") else None
            item["predictions"] = [{"model_version": model_version, "result": annotation_result(response, category)}]
            drafts += 1
        payloads.append(item)
    for start in range(0, len(payloads), batch_size):
        client.projects.import_tasks(id=project_id, request=payloads[start : start + batch_size])
    return ImportSummary(imported=len(payloads), already_present=len(rows) - len(payloads), with_drafts=drafts)


def project_has_feedback_panel(client: LabelStudio, project_id: int) -> bool:
    """Whether the project's labeling config shows the pipeline's feedback panel."""
    return has_feedback_panel(client.projects.get(id=project_id).label_config or "")


def upgrade_project_config(client: LabelStudio, project_id: int) -> bool:
    """Add the feedback panel to the project's labeling config; False when it was there already.

    Only display tags are added, which Label Studio accepts on a project with annotations; should it
    refuse anyway, the error names the project and Label Studio's reason, and nothing changed.
    """
    xml = client.projects.get(id=project_id).label_config or ""
    upgraded, changed = upgrade_labeling_config(xml, project=f"Label Studio project {project_id}")
    if not changed:
        return False
    try:
        client.projects.update(id=project_id, label_config=upgraded)
    except ApiError as e:
        raise LabelStudioError(
            f"Label Studio project {project_id} refused the labeling config with the feedback panel "
            f"(HTTP {e.status_code}: {e.body}); add the panel under Settings > Labeling Interface by hand "
            "(docs/labeling.md shows it)"
        ) from None
    return True
