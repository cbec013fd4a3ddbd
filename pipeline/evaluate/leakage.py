"""Train/eval leakage by content: eval rows whose prompt and response were trained on, by this run or the champion.

The frozen split keeps near-duplicate groups on one side within a snapshot, but a champion trained on an
older snapshot (or an older split rule) may have trained on rows that are eval rows now; comparing with it
on those rows would favour it. Rows are compared by their normalized prompt + response (case, punctuation
and spacing ignored), never by task id: the same pair re-imported under another task is the same row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

from pipeline.validate.text_checks import normalize

# How many overlapping eval task ids the verdict names.
SHOWN_IDS = 5


def content_keys(records: pd.DataFrame) -> list[str]:
    """Per row, sha256 (hex) of the normalized prompt and response."""
    prompts = normalize(records["prompt"]).fillna("")
    responses = normalize(records["response"]).fillna("")
    return [hashlib.sha256(f"{p}\x00{r}".encode()).hexdigest() for p, r in zip(prompts, responses, strict=True)]


@dataclass(frozen=True)
class Overlap:
    """Eval rows found among one source's training rows (`unknown` says why that source could not be read)."""

    source: str
    rows: int
    task_ids: tuple[int, ...] = ()
    unknown: str = ""

    @property
    def clean(self) -> bool:
        return self.rows == 0 and not self.unknown

    def describe(self) -> str:
        if self.unknown:
            return f"{self.source}: unknown ({self.unknown})"
        if not self.rows:
            return f"{self.source}: none"
        shown = ", ".join(str(t) for t in self.task_ids)
        return f"{self.source}: {self.rows} (eval task ids {shown}{', ...' if self.rows > len(self.task_ids) else ''})"


def overlap(eval_records: pd.DataFrame, source: str, train_keys: set[str]) -> Overlap:
    """The eval rows whose content key is in `train_keys`."""
    hits = [int(t) for t, k in zip(eval_records["task_id"], content_keys(eval_records), strict=True) if k in train_keys]
    return Overlap(source, len(hits), tuple(sorted(hits)[:SHOWN_IDS]))


def unknown(source: str, why: str) -> Overlap:
    return Overlap(source, 0, (), why)


@dataclass(frozen=True)
class LeakageReport:
    """The eval set against every training set it was checked with."""

    eval_rows: int
    sides: tuple[Overlap, ...]

    @property
    def passed(self) -> bool:
        return all(s.clean for s in self.sides)

    @property
    def overlapping(self) -> int:
        return sum(s.rows for s in self.sides)

    def detail(self) -> str:
        return f"{self.eval_rows} eval rows vs " + "; ".join(s.describe() for s in self.sides) + "; must be none"

    def with_side(self, side: Overlap) -> LeakageReport:
        """This report with `side` replacing any side of the same source kind (the first word: this/champion)."""
        kind = side.source.split()[0]
        kept = tuple(s for s in self.sides if s.source.split()[0] != kind)
        return LeakageReport(self.eval_rows, (*kept, side))
