"""Run one training job as N processes under torchrun (the DDP path), from a flow or any caller.

The child processes are `lora-pipeline train` (pipeline/cli.py) with `--resume`, so a relaunch after a
crash continues from the newest checkpoint; rank 0 writes the `TrainResult` as JSON, read back here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.config import PipelineConfig
from pipeline.train.results import TrainResult


def torchrun_command(config_file: Path, snapshot_dir: Path, out_dir: Path, result_file: Path, nproc: int) -> list[str]:
    """The launcher command line (standalone rendezvous on this node, one process per GPU)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "pipeline.cli",
        "train",
        str(snapshot_dir),
        "--out",
        str(out_dir),
        "--config",
        str(config_file),
        "--resume",
        "--result-json",
        str(result_file),
    ]


def train_with_torchrun(config: PipelineConfig, snapshot_dir: str | Path, out_dir: str | Path) -> TrainResult:
    """Train `config.train.gpus` processes on the snapshot's frozen split; raises with the log tail on failure."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    config_file = out.parent / "train-config.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    result_file = out.parent / "train-result.json"
    result_file.unlink(missing_ok=True)
    log_file = out.parent / "torchrun.log"
    cmd = torchrun_command(config_file, Path(snapshot_dir), out, result_file, config.train.gpus)
    with log_file.open("w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0 or not result_file.is_file():
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"torchrun training exited with {proc.returncode}; see {log_file}:\n{tail}")
    return TrainResult.from_json_dict(json.loads(result_file.read_text()))
