"""Training data for the CLI: a snapshot's frozen train/eval split, or a parquet file of PairRecords."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.config import PipelineConfig
from pipeline.train.tokenized import TrainingRows


def load_training_data(
    data: Path, config: PipelineConfig, *, eval_path: Path | None = None
) -> tuple[TrainingRows, TrainingRows, str]:
    """(train, eval, dataset hash) from a snapshot directory (its frozen split, memory-mapped Arrow) or a parquet
    file (a DataFrame)."""
    if data.is_dir():
        from pipeline.validate.snapshot import load_snapshot

        if eval_path is not None:
            raise ValueError("--eval-data is only for a parquet DATA; a snapshot carries its own train/eval split")
        snap = load_snapshot(data)
        _check_split_settings(snap.path, snap.meta.get("split", {}), config)
        train_rows, eval_rows = snap.hf_split()
        return train_rows, eval_rows, snap.hash
    if not data.is_file():
        raise FileNotFoundError(f"training data {data} is neither a snapshot directory nor a parquet file")
    train_df = pd.read_parquet(data)
    eval_df = pd.read_parquet(eval_path) if eval_path is not None else train_df.iloc[:0]
    return train_df, eval_df, f"file:{data.name}"


def _check_split_settings(path: Path, split: dict[str, object], config: PipelineConfig) -> None:
    """A config whose split settings differ from the snapshot's would silently train on a different split
    than the one the flow evaluates: say so instead."""
    wanted = {
        "eval_fraction": config.data.eval_fraction,
        "near_duplicate_threshold": config.validation.near_duplicate_threshold,
    }
    differ = [f"{k}: snapshot {split[k]} vs config {v}" for k, v in wanted.items() if k in split and split[k] != v]
    if differ:
        raise ValueError(
            f"snapshot {path} was split with other settings than the config ({'; '.join(differ)}); "
            "use the config the snapshot was pulled with, or pull again to write a snapshot split with these"
        )
