"""What the flows return: plain data for the CLI, the demo and the tests (no live objects)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrainOutcome:
    """What one train-flow run produced (or found already done for its work key)."""

    run_id: str
    work_key: str
    adapter_dir: str
    snapshot_dir: str
    metrics: dict[str, float] = field(default_factory=dict)
    gate_passed: bool = False
    # Model registry version of the adapter (None when the gate failed).
    registered_version: str | None = None
    resumed: bool = False
    # True when the work was already finished by an earlier run and nothing was trained now.
    already_trained: bool = False


@dataclass(frozen=True)
class IngestOutcome:
    """What one ingest-flow run did: the snapshot, the training decision, and where training went."""

    snapshot_dir: str
    snapshot_hash: str
    reconciliation_table: str
    trained: bool
    message: str
    # In-process training: its outcome. Through a deployment: the train flow run's id and final state.
    train: TrainOutcome | None = None
    train_flow_run_id: str | None = None
    train_state: str | None = None
