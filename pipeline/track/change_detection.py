"""Should this snapshot be trained? Compare it with the dataset of the last finished training run.

"Last trained" is looked up in MLflow (the one store every worker shares): the newest FINISHED run
tagged with the same base-model fingerprint and training config hash. Runs that crashed or failed do
not count, so their work is resumed rather than skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from mlflow.entities import Run

from pipeline.config import PipelineConfig
from pipeline.track.store import tracking_client
from pipeline.validate.snapshot import HASHED_COLUMNS, Snapshot, load_snapshot

# Run tags that identify what a training run trained (set by the train flow).
TAG_CONFIG_HASH = "config_hash"
TAG_BASE_FINGERPRINT = "base_model_fingerprint"
TAG_WORK_KEY = "work_key"


@dataclass(frozen=True)
class TrainDecision:
    """Whether to train, and the sentence that says why (logged and shown as the flow's message)."""

    train: bool
    reason: str
    last_run_id: str | None = None
    changed_rows: int | None = None


def last_trained_run(tracking_uri: str, experiment: str, config_hash: str, base_fingerprint: str) -> Run | None:
    """The newest FINISHED run for this (config hash, base model fingerprint), or None."""
    client = tracking_client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=(
            f"tags.{TAG_CONFIG_HASH} = '{config_hash}' and tags.{TAG_BASE_FINGERPRINT} = '{base_fingerprint}' "
            "and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def changed_rows(new: pd.DataFrame, old: pd.DataFrame) -> int:
    """Accepted rows added, changed (any hashed column) or removed between two snapshots, by task id."""
    cols = [c for c in HASHED_COLUMNS if c in new.columns and c in old.columns]

    def keyed(df: pd.DataFrame) -> dict[int, tuple[object, ...]]:
        values = df[cols].astype(object).where(df[cols].notna(), None)
        return {int(t): tuple(row) for t, row in zip(df["task_id"], values.itertuples(index=False), strict=True)}

    a, b = keyed(new), keyed(old)
    return sum(1 for t in a.keys() | b.keys() if a.get(t) != b.get(t))


def decide_training(
    snapshot: Snapshot,
    config: PipelineConfig,
    base_fingerprint: str,
    tracking_uri: str,
    *,
    force: bool = False,
) -> TrainDecision:
    """Train when forced, when nothing was trained yet for this base model and config, or when at least
    `orchestration.min_changed_rows` accepted rows differ from the last trained dataset."""
    if force:
        return TrainDecision(True, "forced: training whether or not annotations changed")
    last = last_trained_run(tracking_uri, config.mlflow.experiment, config.training_fingerprint(), base_fingerprint)
    if last is None:
        return TrainDecision(True, "no finished training run yet for this base model and config")
    run_id, last_hash = last.info.run_id, last.data.tags.get("dataset_hash", "")
    if last_hash == snapshot.hash:
        return TrainDecision(
            False,
            f"no new annotations since snapshot {last_hash[:12]} (trained in MLflow run {run_id})",
            last_run_id=run_id,
            changed_rows=0,
        )
    try:
        previous = load_snapshot(last.data.tags["snapshot_path"])
    except (KeyError, OSError, ValueError) as exc:
        return TrainDecision(
            True, f"dataset changed since {last_hash[:12]} (run {run_id}); its snapshot is unreadable ({exc})", run_id
        )
    n = changed_rows(snapshot.records, previous.records)
    threshold = config.orchestration.min_changed_rows
    if n < threshold:
        return TrainDecision(
            False,
            f"{n} accepted row(s) changed since snapshot {last_hash[:12]} (trained in MLflow run {run_id}); "
            f"waiting for orchestration.min_changed_rows={threshold}",
            last_run_id=run_id,
            changed_rows=n,
        )
    return TrainDecision(True, f"{n} accepted row(s) changed since snapshot {last_hash[:12]}", run_id, n)
