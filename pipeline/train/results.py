"""What training reports: one `StepLog` per optimizer step and the `TrainResult` of a run.

Plain data, no torch: tracking, plots and flows read these without importing the recipe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StepLog:
    """What one optimizer step reports."""

    step: int
    epoch: int
    loss: float
    learning_rate: float
    grad_norm: float
    tokens_per_s: float  # non-pad input tokens (all ranks) per second of this step
    padding_fraction: float = 0.0  # share of the step's (B, T) slots that were padding
    eval_loss: float = float("nan")  # held-out loss when this step evaluated (epoch end / eval_every_steps)


@dataclass
class TrainResult:
    """Where the adapter went and how training went."""

    adapter_dir: Path
    steps: int
    history: list[StepLog]
    eval_loss: float
    wall_time_s: float
    trainable_params: int
    total_params: int
    manifest: dict[str, Any] = field(default_factory=dict)
    peak_memory_bytes: int = 0  # CUDA: max allocated; CPU: the process's peak RSS
    adapter_bytes: int = 0  # adapter_model.safetensors on disk
    tokens_per_s: float = 0.0  # non-pad tokens over the run's training time
    mfu: float | None = None  # CUDA only: 4·N·tokens / time / peak bf16 FLOP/s (see docs/decisions.md)

    @property
    def final_loss(self) -> float:
        return self.history[-1].loss

    @property
    def trainable_share(self) -> float:
        return self.trainable_params / self.total_params

    def metrics(self) -> dict[str, float]:
        """The run metrics every training logs (the train flow and each sweep child), under the same names."""
        return {
            "eval_loss": self.eval_loss,
            "train_loss_final": self.final_loss,
            "train_steps": self.steps,
            "train_wall_time_s": self.wall_time_s,
            "trainable_params": self.trainable_params,
            "trainable_share": self.trainable_share,
            "train_tokens_per_s": self.tokens_per_s,
            "train_peak_memory_bytes": self.peak_memory_bytes,
            "adapter_bytes": self.adapter_bytes,
            # General-text rows mixed into training (train.replay; 0: off); the manifest has their source and hash.
            "train_replay_rows": float((self.manifest.get("replay") or {}).get("rows", 0)),
        }

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON data (the torchrun launcher hands a result back through a file)."""
        data = asdict(self)
        data["adapter_dir"] = str(self.adapter_dir)
        return data

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> TrainResult:
        """The inverse of `to_json_dict`."""
        fields = dict(data)
        fields["adapter_dir"] = Path(fields["adapter_dir"])
        fields["history"] = [StepLog(**h) for h in fields["history"]]
        return cls(**fields)
