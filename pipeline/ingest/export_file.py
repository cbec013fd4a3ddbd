"""Label Studio JSON export files (the UI's Export button, JSON format) as a pull source.

The file goes through the same canonical form, normalization and reconciliation as an API pull.
Bytes that are not valid UTF-8 are kept as lone surrogates (surrogateescape) so that the task
holding them is quarantined with `valid_unicode` instead of the whole file being refused.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.config import LabelStudioConfig
from pipeline.ingest.client import ProjectRef, parse_json
from pipeline.ingest.incremental import canonical_task
from pipeline.ingest.overlap import annotation_frame, annotation_rows
from pipeline.ingest.pull import Pull
from pipeline.ingest.records import normalize_tasks
from pipeline.ingest.task_checks import task_problem, valid_id


def read_export_file(path: str | Path) -> list[Any]:
    """The task list of a JSON export; a `ValueError` names the file and the fix when it is not one."""
    p = Path(path)
    text = p.read_bytes().decode("utf-8", errors="surrogateescape")
    try:
        tasks = parse_json(text, str(p))
    except ValueError as e:
        raise ValueError(f"{e}; export the project with Export > JSON") from None
    if not isinstance(tasks, list):
        raise ValueError(
            f"{p} holds a JSON {type(tasks).__name__}, not a list of tasks; export with Export > JSON "
            "(JSON_MIN, CSV and COCO are not accepted)"
        )
    return tasks


def pull_export_file(path: str | Path, cfg: LabelStudioConfig) -> Pull:
    """A `Pull` from an export file; the categories come from the config (the file has no labeling config)."""
    p = Path(path)
    tasks = read_export_file(p)
    projects = Counter(t.get("project") for t in tasks if isinstance(t, dict) and valid_id(t.get("project")))
    project_id = projects.most_common(1)[0][0] if projects else 0
    canonical = [canonical_task(t) if isinstance(t, dict) else t for t in tasks]
    normalized = normalize_tasks(canonical, project_id=project_id, rule=cfg.annotation_rule)
    # Every annotator's answer, for agreement, as an API pull keeps them (tasks with malformed fields have none).
    ann_tasks: list[int] = []
    ann_rows: list[list[Any]] = []
    seen: set[int] = set()  # a repeated id is quarantined as task_id_duplicate: only its first copy counts
    for task in canonical:
        if not isinstance(task, dict) or not valid_id(task["id"]) or task["id"] in seen:
            continue
        seen.add(task["id"])
        if task_problem(task, task["id"]) is None:
            rows = annotation_rows(task, cfg.annotation_rule, single_responses=False)
            ann_tasks += [task["id"]] * len(rows)
            ann_rows += rows
    project = ProjectRef(id=project_id, title=p.name, categories=tuple(cfg.categories))
    source = {
        "kind": "label-studio-export-file",
        "path": str(p.resolve()),
        "project_id": project_id,
        "annotation_rule": cfg.annotation_rule,
    }
    annotations = annotation_frame(ann_tasks, ann_rows).sort_values("task_id", kind="stable", ignore_index=True)
    return Pull(project=project, source=source, normalized=normalized, annotations=annotations)
