"""Training data for the CLI: a snapshot's frozen train/eval split, or a parquet file of PairRecords."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.config import PipelineConfig


def load_training_data(
    data: Path, config: PipelineConfig, *, eval_path: Path | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(train, eval, dataset hash) from a snapshot directory (split as the flow does) or a parquet file."""
    if data.is_dir():
        from pipeline.validate.snapshot import load_snapshot
        from pipeline.validate.split import split_train_eval

        if eval_path is not None:
            raise ValueError("--eval-data is only for a parquet DATA; a snapshot is split by its own hash")
        snap = load_snapshot(data)
        train_df, eval_df = split_train_eval(snap.records, config.data.eval_fraction, snap.hash)
        return train_df, eval_df, snap.hash
    if not data.is_file():
        raise FileNotFoundError(f"training data {data} is neither a snapshot directory nor a parquet file")
    train_df = pd.read_parquet(data)
    eval_df = pd.read_parquet(eval_path) if eval_path is not None else train_df.iloc[:0]
    return train_df, eval_df, f"file:{data.name}"
