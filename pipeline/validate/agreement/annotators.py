"""Per-annotator figures (tasks, agreement with the winning annotation, ROUGE-L with peers, acceptance and
quarantine rates, quarantine by check) and the list of tasks whose annotators disagree."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.validate.agreement.category import _category_counts
from pipeline.validate.agreement.frame import _code, _Coded, check_frame
from pipeline.validate.agreement.responses import _response_pairs, _task_similarity

__all__ = ["annotator_stats", "disagreements", "quarantine_by_check"]


def annotator_stats(frame: pd.DataFrame, pairs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per annotator: tasks, shared tasks, agreement with the winner, mean ROUGE-L with peers, quarantine rate.

    winner_agreement is the share of their category labels equal to the winner's, on tasks where both
    have a category and they are not the winner (NaN without a `winner` column or such a task). The
    quarantine columns appear when the frame has `quarantined` or `failed_check`; acceptance_rate is
    1 - quarantine_rate, or, with an `accepted` column, the share of their annotations that became training rows.
    """
    coded = _code(check_frame(frame))
    return _annotator_stats(coded, _response_pairs(coded) if pairs is None else pairs)


def _annotator_stats(coded: _Coded, pairs: pd.DataFrame) -> pd.DataFrame:
    f, n_ann = coded.frame, len(coded.annotators)
    per_task = np.bincount(coded.task, minlength=coded.n_tasks)
    out = pd.DataFrame(
        {
            "annotator": coded.annotators,
            "tasks": np.bincount(coded.annotator, minlength=n_ann),
            "shared_tasks": np.bincount(coded.annotator, weights=per_task[coded.task] >= 2, minlength=n_ann),
        }
    )
    out["shared_tasks"] = out["shared_tasks"].astype(np.int64)
    if "winner" in f.columns:
        won = f["winner"].to_numpy(dtype=bool)
        winner_cat = np.full(coded.n_tasks, -1, np.int64)
        winner_cat[coded.task[won]] = coded.category[won]
        theirs = winner_cat[coded.task]
        compared = ~won & (theirs >= 0) & (coded.category >= 0)
        n_cmp = np.bincount(coded.annotator, weights=compared, minlength=n_ann)
        n_agree = np.bincount(coded.annotator, weights=compared & (coded.category == theirs), minlength=n_ann)
        out["wins"] = np.bincount(coded.annotator, weights=won, minlength=n_ann).astype(np.int64)
        out["winner_compared"] = n_cmp.astype(np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["winner_agreement"] = np.where(n_cmp > 0, n_agree / n_cmp, np.nan)
    both = pd.concat(
        [pairs[["annotator_a", "rouge_l"]].set_axis(["annotator", "rouge_l"], axis=1),
         pairs[["annotator_b", "rouge_l"]].set_axis(["annotator", "rouge_l"], axis=1)]
    )  # fmt: skip
    out["response_rouge_l"] = out["annotator"].map(both.groupby("annotator")["rouge_l"].mean()).astype(float)
    quarantined = _quarantined(f)
    if quarantined is not None:
        n_q = np.bincount(coded.annotator, weights=quarantined, minlength=n_ann)
        out["quarantined"] = n_q.astype(np.int64)
        out["quarantine_rate"] = n_q / np.maximum(out["tasks"].to_numpy(), 1)
        out["acceptance_rate"] = 1.0 - out["quarantine_rate"]
    if "accepted" in f.columns:
        # Given (a pull): only the winning annotation of a task can become a training row.
        n_a = np.bincount(coded.annotator, weights=f["accepted"].to_numpy(dtype=bool), minlength=n_ann)
        out["accepted"] = n_a.astype(np.int64)
        out["acceptance_rate"] = n_a / np.maximum(out["tasks"].to_numpy(), 1)
    return out


def _quarantined(frame: pd.DataFrame) -> np.ndarray | None:
    if "quarantined" in frame.columns:
        return frame["quarantined"].to_numpy(dtype=bool)
    if "failed_check" in frame.columns:
        return frame["failed_check"].notna().to_numpy()
    return None


def quarantine_by_check(frame: pd.DataFrame) -> pd.DataFrame | None:
    """Per (annotator, failed check): rows and their share of the annotator's rows; None without those columns."""
    return _quarantine_by_check(check_frame(frame))


def _quarantine_by_check(f: pd.DataFrame) -> pd.DataFrame | None:
    quarantined = _quarantined(f)
    if quarantined is None:
        return None
    check = f["failed_check"] if "failed_check" in f.columns else pd.Series(None, index=f.index, dtype=object)
    hit = pd.DataFrame(
        {"annotator": f["annotator"].to_numpy()[quarantined], "check": check.to_numpy(dtype=object)[quarantined]}
    )
    hit["check"] = hit["check"].where(hit["check"].notna(), "(unnamed)").astype(str)
    counts = hit.groupby(["annotator", "check"]).size().rename("rows").reset_index()
    totals = f.groupby("annotator").size()
    counts["rate"] = counts["rows"] / counts["annotator"].map(totals).to_numpy()
    return counts.sort_values(["annotator", "rows", "check"], ascending=[True, False, True], ignore_index=True)


# ------------------------------------------------------------------------------------- disagreements


def disagreements(
    frame: pd.DataFrame, *, response_threshold: float = 0.5, similarity: pd.Series | None = None
) -> pd.DataFrame:
    """Tasks whose annotators disagree: categories differ, or mean pairwise ROUGE-L < response_threshold.

    Columns: task_id (sorted), category_differs, response_rouge_l (NaN when < 2 responses), reason.
    A missing category next to a given one is missing data, not disagreement. `similarity` (per-task mean
    ROUGE-L indexed by task_id) saves recomputing it.
    """
    coded = _code(check_frame(frame))
    if similarity is None:
        similarity = _task_similarity(_response_pairs(coded))
    return _disagreements(coded, similarity, response_threshold)


def _disagreements(coded: _Coded, similarity: pd.Series, threshold: float) -> pd.DataFrame:
    differs = (
        ((_category_counts(coded) > 0).sum(axis=1) > 1) if len(coded.categories) else np.zeros(coded.n_tasks, bool)
    )
    score = similarity.reindex(coded.task_ids).to_numpy(dtype=np.float64)
    low = score < threshold
    flagged = np.flatnonzero(differs | low)
    labels = _labels_by_task(coded, flagged[differs[flagged]])
    reasons = []
    for t in flagged:
        parts = [f"categories differ ({labels[t]})"] if differs[t] else []
        if low[t]:
            parts.append(f"response ROUGE-L {score[t]:.2f} < {threshold:.2f}")
        reasons.append("; ".join(parts))
    return pd.DataFrame(
        {
            "task_id": coded.task_ids[flagged],
            "category_differs": differs[flagged],
            "response_rouge_l": score[flagged],
            "reason": pd.Series(reasons, dtype=object),
        }
    )


def _labels_by_task(coded: _Coded, tasks: np.ndarray) -> dict[int, str]:
    """'annotator=category, ...' (sorted by annotator) for the given task codes, joined without a Python loop."""
    rows = np.flatnonzero(np.isin(coded.task, tasks) & (coded.category >= 0))
    rows = rows[np.lexsort((coded.annotator[rows], coded.task[rows]))]
    if not len(rows):
        return {}
    task = coded.task[rows]
    first = np.r_[True, task[1:] != task[:-1]]
    sep = np.where(first, "", ", ").astype(object)
    pieces = sep + coded.annotators[coded.annotator[rows]] + "=" + coded.categories[coded.category[rows]]
    joined = np.add.reduceat(pieces, np.flatnonzero(first))
    return dict(zip(task[first].tolist(), joined.tolist(), strict=True))
