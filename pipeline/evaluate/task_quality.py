"""Task quality from generations: adapter vs base (and vs the champion) on the same held-out rows.

ROUGE-L gets a paired bootstrap interval on adapter - base (the same resampled rows on both sides, as the
loss rule); exact match, a binary outcome, gets McNemar's exact test on the discordant rows (rows one side
got right and the other did not). Per-category means show where a change comes from. The gate's
`task_quality_*` rules read this (pipeline/evaluate/gate.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.evaluate.intervals import Interval, mean_delta


def mcnemar_exact_p(base_only: int, adapter_only: int) -> float:
    """Two-sided exact McNemar p-value: under "no difference" each of the n = b + c discordant rows is equally
    likely to favour either side, so min(b, c) ~ Binomial(n, 1/2); p = 2 * P(X <= min(b, c)), capped at 1."""
    if base_only < 0 or adapter_only < 0:
        raise ValueError(f"discordant counts must be >= 0, got base_only={base_only}, adapter_only={adapter_only}")
    n = base_only + adapter_only
    if n == 0:
        return 1.0
    k = min(base_only, adapter_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def mcnemar_min_discordant(alpha: float) -> int:
    """Fewest discordant rows, all favouring one side, that the exact test can call significant at `alpha`:
    below it no eval set, however large, lets the exact-match rule fail."""
    k = 1
    while 2.0 * 0.5**k >= alpha:
        k += 1
    return k


@dataclass(frozen=True)
class McNemar:
    """Exact match, base vs adapter on the same rows: the discordant counts and the exact two-sided p-value."""

    base_only: int  # rows the base matched exactly and the adapter did not
    adapter_only: int  # rows the adapter matched exactly and the base did not
    p_value: float

    @property
    def adapter_worse(self) -> bool:
        return self.base_only > self.adapter_only


def mcnemar(base_correct: Sequence[bool], adapter_correct: Sequence[bool]) -> McNemar:
    """McNemar's exact test on paired binary outcomes (same rows, same order)."""
    if len(base_correct) != len(adapter_correct):
        raise ValueError(f"paired outcomes differ in length: {len(base_correct)} vs {len(adapter_correct)}")
    b = sum(1 for x, y in zip(base_correct, adapter_correct, strict=True) if x and not y)
    c = sum(1 for x, y in zip(base_correct, adapter_correct, strict=True) if y and not x)
    return McNemar(base_only=b, adapter_only=c, p_value=mcnemar_exact_p(b, c))


@dataclass(frozen=True)
class CategoryQuality:
    """Mean generation scores of one category's held-out rows."""

    category: str
    rows: int
    rouge_l_base: float
    rouge_l_adapter: float
    exact_match_base: float
    exact_match_adapter: float


@dataclass(frozen=True)
class TaskQuality:
    """Generation quality on the held-out rows: paired intervals (adapter - base), McNemar, per category."""

    rows: int
    rouge_l: Interval  # adapter - base mean ROUGE-L F1 (0-1)
    exact_match: Interval  # adapter - base exact-match rate (fraction)
    mcnemar: McNemar
    categories: list[CategoryQuality] = field(default_factory=list)

    @property
    def alpha(self) -> float:
        """The test level matching the intervals' confidence."""
        return 1.0 - self.exact_match.confidence

    @property
    def exact_match_mde(self) -> float:
        """Smallest drop in exact-match rate the exact-match rule can detect: the bootstrap MDE, but never below
        the fewest discordant rows the exact test can call significant, over the rows."""
        return max(self.exact_match.mde, mcnemar_min_discordant(self.alpha) / self.rows)

    def metrics(self) -> dict[str, float]:
        out = {
            "task_rouge_l_delta": self.rouge_l.estimate,
            "task_rouge_l_delta_low": self.rouge_l.low,
            "task_rouge_l_delta_high": self.rouge_l.high,
            "task_exact_match_delta": self.exact_match.estimate,
            "task_exact_match_delta_low": self.exact_match.low,
            "task_exact_match_delta_high": self.exact_match.high,
            "task_exact_match_mcnemar_p": self.mcnemar.p_value,
        }
        return out

    def markdown(self) -> str:
        """The report's section: intervals, McNemar counts and the per-category table."""
        r, e, m = self.rouge_l, self.exact_match, self.mcnemar
        lines = [
            f"## Task quality (greedy generations on {self.rows} held-out rows)",
            "",
            "| comparison | delta | interval | MDE (80% power) |",
            "|---|---|---|---|",
            f"| ROUGE-L adapter - base | {r.estimate:+.4f} | [{r.low:+.4f}, {r.high:+.4f}] | {r.mde:.4f} |",
            f"| exact match adapter - base | {e.estimate:+.4f} | [{e.low:+.4f}, {e.high:+.4f}] | "
            f"{self.exact_match_mde:.4f} |",
        ]
        lines += [
            "",
            f"Exact match, McNemar exact test: {m.base_only} rows only the base matched, {m.adapter_only} only the "
            f"adapter; p = {m.p_value:.3g}.",
            "",
            "| category | rows | ROUGE-L base | ROUGE-L adapter | exact match base | exact match adapter |",
            "|---|---|---|---|---|---|",
        ]
        for q in self.categories:
            lines.append(
                f"| {q.category} | {q.rows} | {q.rouge_l_base:.3f} | {q.rouge_l_adapter:.3f} | "
                f"{q.exact_match_base:.3f} | {q.exact_match_adapter:.3f} |"
            )
        return "\n".join(lines) + "\n"


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def task_quality(
    rows: Sequence[dict[str, Any]],
    *,
    samples: int,
    confidence: float,
    seed: int,
) -> TaskQuality:
    """Paired intervals, McNemar and per-category means from scored side-by-side rows (`base_rouge_l`,
    `adapter_rouge_l`, `base_exact_match`, `adapter_exact_match`, `category`)."""
    if not rows:
        raise ValueError("task quality needs scored generations; set eval.generation_samples above 0 (null: all rows)")
    kw: dict[str, Any] = {"samples": samples, "confidence": confidence, "seed": seed}
    base_r = [float(r["base_rouge_l"]) for r in rows]
    adapter_r = [float(r["adapter_rouge_l"]) for r in rows]
    base_em = [bool(r["base_exact_match"]) for r in rows]
    adapter_em = [bool(r["adapter_exact_match"]) for r in rows]
    by_category: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_category.setdefault(str(r.get("category", "")), []).append(i)
    categories = [
        CategoryQuality(
            category=name,
            rows=len(idx),
            rouge_l_base=_mean([base_r[i] for i in idx]),
            rouge_l_adapter=_mean([adapter_r[i] for i in idx]),
            exact_match_base=_mean([float(base_em[i]) for i in idx]),
            exact_match_adapter=_mean([float(adapter_em[i]) for i in idx]),
        )
        for name, idx in sorted(by_category.items())
    ]
    return TaskQuality(
        rows=len(rows),
        rouge_l=mean_delta(base_r, adapter_r, **kw),
        exact_match=mean_delta([float(x) for x in base_em], [float(x) for x in adapter_em], **kw),
        mcnemar=mcnemar(base_em, adapter_em),
        categories=categories,
    )


@dataclass(frozen=True)
class ChampionQuality:
    """The champion's generations on the same held-out rows: its means and adapter - champion ROUGE-L."""

    rouge_l: float
    exact_match: float
    rouge_l_delta: Interval  # adapter - champion mean ROUGE-L, paired over rows

    def metrics(self) -> dict[str, float]:
        d = self.rouge_l_delta
        return {
            "champion_rouge_l": self.rouge_l,
            "champion_exact_match": self.exact_match,
            "task_rouge_l_vs_champion": d.estimate,
            "task_rouge_l_vs_champion_low": d.low,
            "task_rouge_l_vs_champion_high": d.high,
        }


def champion_quality(
    rows: Sequence[dict[str, Any]],
    champion_rouge_l: Sequence[float],
    champion_exact_match: Sequence[bool],
    *,
    samples: int,
    confidence: float,
    seed: int,
) -> ChampionQuality:
    """The champion's per-row scores on the adapter's side-by-side rows (same rows, same order) summarised."""
    if not rows or not (len(champion_rouge_l) == len(champion_exact_match) == len(rows)):
        raise ValueError(f"champion scores cover {len(champion_rouge_l)} rows, the adapter's {len(rows)}")
    adapter_r = [float(r["adapter_rouge_l"]) for r in rows]
    return ChampionQuality(
        rouge_l=_mean(list(champion_rouge_l)),
        exact_match=_mean([float(x) for x in champion_exact_match]),
        rouge_l_delta=mean_delta(list(champion_rouge_l), adapter_r, samples=samples, confidence=confidence, seed=seed),
    )
