"""Count every task of a pull into exactly one bucket: accepted, quarantined (by check) or unusable (by reason)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd


class ReconciliationError(RuntimeError):
    """Tasks seen on the source do not add up to accepted + quarantined + unusable."""


@dataclass(frozen=True)
class Reconciliation:
    """How every task seen in one pull was accounted for."""

    tasks_seen: int
    accepted: int
    quarantined: int
    unusable: int
    quarantined_by_check: dict[str, int]
    unusable_by_reason: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def table(self) -> str:
        """A plain-text table for the CLI and logs."""
        lines = [
            f"{'tasks seen':<34}{self.tasks_seen:>8}",
            f"{'rows accepted':<34}{self.accepted:>8}",
            f"{'rows quarantined':<34}{self.quarantined:>8}",
        ]
        lines += [f"{'  failed ' + k:<34}{v:>8}" for k, v in sorted(self.quarantined_by_check.items())]
        lines.append(f"{'tasks without a usable annotation':<34}{self.unusable:>8}")
        lines += [f"{'  ' + k:<34}{v:>8}" for k, v in sorted(self.unusable_by_reason.items())]
        return "\n".join(lines)


def reconcile(
    tasks_seen: int, accepted: pd.DataFrame, quarantined: pd.DataFrame, unusable: pd.DataFrame
) -> Reconciliation:
    """Count the buckets and fail loudly if they do not add up to the tasks seen."""
    # Normalize-stage rows are one per task (duplicated ids included: each copy is a task seen);
    # validate-stage rows come from records with unique ids, and a task failing several checks counts once.
    normalized = quarantined[quarantined["stage"] != "validate"]
    validated = quarantined[quarantined["stage"] == "validate"].drop_duplicates("task_id")
    n_quarantined = len(normalized) + len(validated)
    by_check: dict[str, int] = {}
    for check in [*normalized["check"], *validated["check"]]:
        by_check[str(check)] = by_check.get(str(check), 0) + 1
    rec = Reconciliation(
        tasks_seen=tasks_seen,
        accepted=len(accepted),
        quarantined=n_quarantined,
        unusable=len(unusable),
        quarantined_by_check=by_check,
        unusable_by_reason={str(k): int(v) for k, v in unusable["reason"].value_counts().items()},
    )
    if rec.accepted + rec.quarantined + rec.unusable != rec.tasks_seen:
        raise ReconciliationError(
            f"pull does not reconcile: {rec.tasks_seen} tasks seen but {rec.accepted} accepted + "
            f"{rec.quarantined} quarantined + {rec.unusable} unusable = "
            f"{rec.accepted + rec.quarantined + rec.unusable}"
        )
    return rec
