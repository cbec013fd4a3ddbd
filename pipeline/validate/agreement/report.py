"""`agreement_report`: every agreement figure of one frame, computed once; metrics for MLflow, Markdown for
the validation report."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.validate.agreement.annotators import _annotator_stats, _disagreements, _quarantine_by_check
from pipeline.validate.agreement.category import Estimate, _category_table, _pairwise_cohen, bootstrap_agreement
from pipeline.validate.agreement.frame import _code, check_frame
from pipeline.validate.agreement.responses import _response_pairs, _task_similarity

__all__ = ["METRIC_PREFIX", "AgreementReport", "agreement_report", "pull_agreement"]

METRIC_PREFIX = "data/agreement/"
_PREFIX = METRIC_PREFIX
_MARKDOWN_ROWS = 20
_ANNOTATOR_HEADERS = {
    "winner_agreement": "category = winner's",
    "response_rouge_l": "response ROUGE-L with peers",
    "quarantine_rate": "quarantined",
    "acceptance_rate": "accepted for training",
}
_SHARES = ("quarantine_rate", "acceptance_rate")


@dataclass(frozen=True, eq=False)
class AgreementReport:
    """Everything `agreement_report` measured; `metrics()` for MLflow, `markdown()` for the validation report."""

    tasks: int
    annotations: int
    annotators: int
    tasks_multi_annotated: int
    category_tasks: int
    fleiss_kappa: Estimate
    krippendorff_alpha: Estimate
    cohen_kappa_mean: float
    cohen_pairs: pd.DataFrame
    response_tasks: int
    response_similarity: pd.Series  # mean pairwise ROUGE-L F1 per task
    annotator_stats: pd.DataFrame
    quarantine_by_check: pd.DataFrame | None
    disagreements: pd.DataFrame
    n_boot: int
    seed: int
    ci: float
    response_threshold: float
    min_pair_overlap: int

    def response_quantiles(self) -> dict[str, float]:
        """p10, p25, p50, p75 and p90 of the per-task response similarity (NaN without such tasks)."""
        s = self.response_similarity.to_numpy(dtype=np.float64)
        qs = {"p10": 0.1, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p90": 0.9}
        return {k: float(np.quantile(s, q)) if len(s) else math.nan for k, q in qs.items()}

    def metrics(self) -> dict[str, float]:
        """Flat metrics, all plain floats, under data/agreement/ (category/..., response/..., and counts)."""
        s = self.response_similarity.to_numpy(dtype=np.float64)
        out: dict[str, float] = {
            "tasks": self.tasks,
            "annotations": self.annotations,
            "annotators": self.annotators,
            "tasks_multi_annotated": self.tasks_multi_annotated,
            "category_tasks": self.category_tasks,
        }
        for name, est in (("fleiss_kappa", self.fleiss_kappa), ("krippendorff_alpha", self.krippendorff_alpha)):
            out[f"category/{name}"] = est.value
            out[f"category/{name}_ci_low"] = est.ci_low
            out[f"category/{name}_ci_high"] = est.ci_high
        out["category/cohen_kappa_mean"] = self.cohen_kappa_mean
        out["category/cohen_pairs"] = len(self.cohen_pairs)
        out["response/tasks"] = self.response_tasks
        out["response/rouge_l_mean"] = float(s.mean()) if len(s) else math.nan
        for k, v in self.response_quantiles().items():
            out[f"response/rouge_l_{k}"] = v
        out["response/below_threshold_share"] = float((s < self.response_threshold).mean()) if len(s) else math.nan
        out["disagreement_tasks"] = len(self.disagreements)
        return {_PREFIX + k: float(v) for k, v in out.items()}

    def markdown(self, title: str = "Inter-annotator agreement") -> str:
        """A section for the validation report: figures with intervals, annotators, disagreeing tasks."""
        m = {k.removeprefix(_PREFIX): v for k, v in self.metrics().items()}
        level = f"{self.ci:.0%}"
        lines = [
            f"## {title}",
            "",
            f"{self.tasks:,} tasks, {self.annotations:,} annotations by {self.annotators:,} annotators; "
            f"{self.tasks_multi_annotated:,} tasks have two or more annotators ({self.category_tasks:,} with two "
            f"or more categories, {self.response_tasks:,} with two or more responses).",
            "",
        ]
        if self.tasks_multi_annotated == 0:
            return "\n".join([*lines, "No task has two or more annotators: agreement cannot be measured.", ""])
        lines += [
            f"| figure | value | {level} interval |",
            "|---|---|---|",
            f"| Krippendorff's alpha (category, nominal) | {_num(self.krippendorff_alpha.value)} | "
            f"{_interval(self.krippendorff_alpha)} |",
            f"| Fleiss' kappa (category) | {_num(self.fleiss_kappa.value)} | {_interval(self.fleiss_kappa)} |",
            f"| Light's kappa (mean Cohen's kappa over {len(self.cohen_pairs):,} annotator pairs with "
            f">= {self.min_pair_overlap} shared tasks) | {_num(self.cohen_kappa_mean)} | |",
            f"| Response ROUGE-L F1, mean over tasks | {_num(m['response/rouge_l_mean'])} | |",
            f"| Response ROUGE-L F1, p10 / median / p90 | {_num(m['response/rouge_l_p10'])} / "
            f"{_num(m['response/rouge_l_p50'])} / {_num(m['response/rouge_l_p90'])} | |",
            f"| Tasks with response ROUGE-L < {self.response_threshold:.2f} | {_share(m['response/below_threshold_share'])} | |",
            f"| Tasks in disagreement | {len(self.disagreements):,} | |",
            "",
            f"Intervals: percentile bootstrap over tasks, {self.n_boot:,} resamples, seed {self.seed}. "
            "Undefined figures (n/a) mean too few labels or a single category throughout.",
            "",
        ]
        lines += self._annotator_lines() + self._disagreement_lines()
        return "\n".join(lines)

    def _annotator_lines(self) -> list[str]:
        a = self.annotator_stats.sort_values(["tasks", "annotator"], ascending=[False, True])
        cols = [c for c in _ANNOTATOR_HEADERS if c in a.columns and a[c].notna().any()]
        head = ["annotator", "tasks", "shared tasks", *(_ANNOTATOR_HEADERS[c] for c in cols)]
        lines = ["### Annotators", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in a.head(_MARKDOWN_ROWS * 5).itertuples(index=False):
            vals = [_cell(r.annotator), f"{int(r.tasks):,}", f"{int(r.shared_tasks):,}"]
            vals += [_share(getattr(r, c)) if c in _SHARES else _num(getattr(r, c)) for c in cols]
            lines.append("| " + " | ".join(vals) + " |")
        if len(a) > _MARKDOWN_ROWS * 5:
            lines.append(f"\n{len(a) - _MARKDOWN_ROWS * 5:,} more annotators are in the agreement data.")
        lines.append("")
        q = self.quarantine_by_check
        if q is not None and len(q):
            lines += [
                "### Quarantine by check",
                "",
                "| annotator | check | rows | share of their rows |",
                "|---|---|---|---|",
            ]
            for r in q.head(_MARKDOWN_ROWS * 5).itertuples(index=False):
                lines.append(f"| {_cell(r.annotator)} | {_cell(r.check)} | {int(r.rows):,} | {_share(r.rate)} |")
            lines.append("")
        return lines

    def _disagreement_lines(self) -> list[str]:
        d = self.disagreements
        if not len(d):
            return ["No task's annotators disagree.", ""]
        lines = [f"### Disagreements ({len(d):,} tasks; first {min(len(d), _MARKDOWN_ROWS)})", "", "| task | reason |"]
        lines.append("|---|---|")
        for r in d.head(_MARKDOWN_ROWS).itertuples(index=False):
            lines.append(f"| {int(r.task_id)} | {_cell(r.reason)} |")
        return [*lines, ""]


def _num(value: object) -> str:
    x = float(value)  # type: ignore[arg-type]
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def _share(value: object) -> str:
    x = float(value)  # type: ignore[arg-type]
    return "n/a" if math.isnan(x) else f"{x:.1%}"


def _interval(est: Estimate) -> str:
    return "n/a" if math.isnan(est.ci_low) else f"[{est.ci_low:.3f}, {est.ci_high:.3f}]"


def _cell(value: object) -> str:
    # Annotator names and labels are data, not markup (same escaping as report.py).
    text = str(value)
    for ch in ("\\", "|", "<", ">", "`", "*", "_", "[", "]"):
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", " ")


def agreement_report(
    frame: pd.DataFrame,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    response_threshold: float = 0.5,
    ci: float = 0.95,
    min_pair_overlap: int = 10,
) -> AgreementReport:
    """All agreement figures of a long annotation frame (see `check_frame` for its columns)."""
    coded = _code(check_frame(frame))
    table = _category_table(coded)
    estimates = bootstrap_agreement(table, n_boot=n_boot, seed=seed, ci=ci)
    cohen = _pairwise_cohen(coded, min_pair_overlap)
    pairs = _response_pairs(coded)
    similarity = _task_similarity(pairs)
    kappas = cohen["kappa"].to_numpy(dtype=np.float64)
    return AgreementReport(
        tasks=coded.n_tasks,
        annotations=len(coded.frame),
        annotators=len(coded.annotators),
        tasks_multi_annotated=int((np.bincount(coded.task, minlength=coded.n_tasks) >= 2).sum()),
        category_tasks=int((table.to_numpy().sum(axis=1) >= 2).sum()),
        fleiss_kappa=estimates["fleiss_kappa"],
        krippendorff_alpha=estimates["krippendorff_alpha"],
        cohen_kappa_mean=float(np.nanmean(kappas)) if np.isfinite(kappas).any() else math.nan,
        cohen_pairs=cohen,
        response_tasks=len(similarity),
        response_similarity=similarity,
        annotator_stats=_annotator_stats(coded, pairs),
        quarantine_by_check=_quarantine_by_check(coded.frame),
        disagreements=_disagreements(coded, similarity, response_threshold),
        n_boot=n_boot,
        seed=seed,
        ci=ci,
        response_threshold=response_threshold,
        min_pair_overlap=min_pair_overlap,
    )


def pull_agreement(
    annotations: pd.DataFrame | None,
    quarantined: pd.DataFrame,
    accepted_annotation_ids: pd.Series,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    response_threshold: float = 0.5,
) -> AgreementReport | None:
    """The agreement of one pull (`Pull.annotations`), or None when no task has two or more annotators.

    Only a task's winning annotation is checked, so it alone can be quarantined (under its first failing
    check, as in the reconciliation) or accepted (its annotation id among the training rows).
    """
    if annotations is None or not annotations["task_id"].duplicated().any():
        return None
    ann_id = annotations["annotation_id"]
    q = quarantined.dropna(subset=["annotation_id"]).drop_duplicates("annotation_id")
    first_check = pd.Series(q["check"].astype(str).to_numpy(), index=q["annotation_id"].astype("int64").to_numpy())
    won = annotations["winner"].to_numpy(dtype=bool)
    failed = ann_id.map(first_check).astype(object).where(won & ann_id.isin(first_check.index).to_numpy(), None)
    frame = annotations.assign(
        failed_check=failed,
        accepted=won & ann_id.isin(accepted_annotation_ids.dropna().astype("int64")).to_numpy(dtype=bool),
    )
    return agreement_report(frame, n_boot=n_boot, seed=seed, response_threshold=response_threshold)
