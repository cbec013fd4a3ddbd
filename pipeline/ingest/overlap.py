"""Every annotator's answer on a task, kept beside the winning one, for agreement (pipeline/validate/agreement/).

With Label Studio's overlap setting several annotators submit on one task. Training keeps one annotation
per task (records.pick_annotation); agreement needs all of them. `annotation_rows` reads them from the
same raw task, without changing which annotation wins, as compact rows the task store keeps per task
(so an incremental pull has them for unchanged tasks too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline.ingest.labeling_config import CATEGORY_NAME, RESPONSE_NAME
from pipeline.ingest.records import AnnotationRule, _annotator, _list, _result_value, _safe_text, pick_annotation
from pipeline.ingest.task_checks import valid_id

# One row per annotator of a task: [annotator, annotation_id, category, response, winner].
ROW_FIELDS: tuple[str, ...] = ("annotator", "annotation_id", "category", "response", "winner")
# A multi-choice answer becomes one nominal value: its choices, sorted, joined by this.
MULTI_CHOICE_SEP = "|"


def annotation_rows(
    task: dict[str, Any],
    rule: AnnotationRule = "latest",
    *,
    category_name: str = CATEGORY_NAME,
    response_name: str = RESPONSE_NAME,
    single_responses: bool = True,
) -> list[list[Any]]:
    """One row per annotator with a submitted annotation on the task (see ROW_FIELDS), in order of appearance.

    An annotator with several submitted annotations counts once: the winning one if it is theirs, else their
    most recent. Annotations without an annotator are left out (annotations_frame refuses them instead).
    `single_responses=False` drops the response text when only one annotator answered: no pair to compare,
    and the task store need not hold the text twice.
    """
    winner, _ = pick_annotation(task, rule)
    by_annotator: dict[str, list[dict[str, Any]]] = {}
    for ann in _list(task.get("annotations")):
        if isinstance(ann, dict) and ann.get("was_cancelled") is not True:
            who = _annotator(ann) if _plain_annotator(ann.get("completed_by")) else ""
            if who:
                by_annotator.setdefault(who, []).append(ann)
    keep_text = single_responses or len(by_annotator) > 1
    rows = []
    for who, anns in by_annotator.items():
        ann = winner if any(a is winner for a in anns) else pick_annotation({"annotations": anns}, "latest")[0]
        assert ann is not None  # anns is a non-empty list of submitted annotations
        rows.append(_row(who, ann, ann is winner, category_name, response_name, keep_text))
    return rows


def _row(
    who: str, ann: dict[str, Any], won: bool, category_name: str, response_name: str, keep_text: bool
) -> list[Any]:
    # Only text values compare; a malformed value (quarantined by normalization when it wins) is no answer here.
    choices = [c for c in _result_value(ann, category_name, "choices") or [] if isinstance(c, str)]
    texts = [t for t in _result_value(ann, response_name, "text") or [] if isinstance(t, str)] if keep_text else []
    ann_id = ann.get("id")
    # Stored in Arrow/parquet (the task store, the agreement tables): lone surrogates become U+FFFD here; the
    # winning annotation's own text is quarantined as `valid_unicode` by normalization.
    return [
        _safe_text(who),
        ann_id if valid_id(ann_id) else None,
        _safe_text(MULTI_CHOICE_SEP.join(sorted(choices))) if choices else None,
        _safe_text("\n".join(texts)) if texts else None,
        won,
    ]


def annotation_frame(task_ids: Sequence[int], rows: Sequence[Sequence[Any]]) -> pd.DataFrame:
    """The long frame agreement reads (task_id + ROW_FIELDS) from task ids and their `annotation_rows`, aligned."""
    frame = pd.DataFrame(list(rows), columns=list(ROW_FIELDS))
    frame.insert(0, "task_id", np.asarray(task_ids, dtype=np.int64))
    frame["annotation_id"] = frame["annotation_id"].astype("Int64")
    frame["winner"] = frame["winner"].astype(bool)
    for col in ("annotator", "category", "response"):
        frame[col] = frame[col].astype(object)
    return frame


def _plain_annotator(who: Any) -> bool:
    """An annotator given as an id, a string or a user object whose email/id is one (never a nested structure)."""
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return who is None or isinstance(who, str | int)
