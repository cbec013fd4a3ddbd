"""Checkpoint and resume: a training process killed with SIGKILL resumes to the same adapter as an unbroken run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline.config import load_config
from pipeline.train.checkpoint import checkpoint_root, list_checkpoints
from pipeline.train.recipe import train_adapter
from tests.conftest import make_records

REPO_ROOT = Path(__file__).resolve().parents[1]


def _write_config(path: Path, model_dir: Path, **train: object) -> Path:
    cfg = {
        "base_model": str(model_dir),
        "lora": {"r": 4, "alpha": 8.0, "dropout": 0.1, "target_modules": "all-linear"},
        "train": {"learning_rate": 5e-3, "epochs": 2, "batch_size": 4, "seed": 3, "device": "cpu", **train},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_gives_the_same_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Kill `lora-pipeline train` with SIGKILL at a random step, resume, and match an uninterrupted run (≤1e-6)."""
    records = make_records(20)
    data = tmp_path / "train.parquet"
    records.to_parquet(data)
    cfg_path = _write_config(tmp_path / "cfg.yaml", tiny_model_dir, checkpoint_every_steps=1, keep_checkpoints=2)
    config = load_config(cfg_path)
    total = 10  # 20 rows / batch 4 = 5 steps per epoch, 2 epochs
    kill_at = random.Random().randint(2, total - 2)  # a different step each run; printed on failure

    out = tmp_path / "resumed"
    # The real recipe in its own process, killed by SIGKILL from its step hook: a kill sent from outside
    # would race steps that take milliseconds on the tiny model, and might land after the last one.
    driver = (
        "import os, signal, sys, pandas as pd\n"
        "from pipeline.config import load_config\n"
        "from pipeline.train.recipe import train_adapter\n"
        "cfg, data, out, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])\n"
        "def hook(log):\n"
        "    print('step', log.step, flush=True)\n"
        "    if log.step == kill_at:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "df = pd.read_parquet(data)\n"
        "train_adapter(load_config(cfg), df, df.iloc[:0], out, dataset_hash='file:' + os.path.basename(data), on_step=hook)\n"
    )
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", driver, str(cfg_path), str(data), str(out), str(kill_at)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, (kill_at, proc.stdout[-2000:], proc.stderr[-3000:])
    assert proc.stdout.split()[-1] == str(kill_at)
    assert not (out / "adapter_model.safetensors").exists()
    saved = [c.step for c in list_checkpoints(checkpoint_root(out))]
    assert saved and max(saved) <= kill_at and len(saved) <= 2, (kill_at, saved)

    resumed = train_adapter(config, records, records.iloc[:0], out, dataset_hash=f"file:{data.name}", resume=True)
    straight = train_adapter(config, records, records.iloc[:0], tmp_path / "straight", dataset_hash=f"file:{data.name}")

    assert resumed.steps == straight.steps == total
    assert [h.step for h in resumed.history] == list(range(1, total + 1))
    assert [h.loss for h in resumed.history] == pytest.approx([h.loss for h in straight.history], abs=1e-6)
    wa = load_file(out / "adapter_model.safetensors")
    wb = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert diff <= 1e-6, (kill_at, diff)
    assert json.loads((out / "manifest.json").read_text())["steps"] == total


def test_checkpoints_are_atomic_pruned_and_refuse_another_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Keep-last-K pruning, temp dirs of a killed write are ignored, and a changed config cannot resume."""
    records = make_records(12)
    cfg = load_config(_write_config(tmp_path / "c.yaml", tiny_model_dir, checkpoint_every_steps=2, keep_checkpoints=2))
    out = tmp_path / "a"
    train_adapter(cfg, records, records.iloc[:0], out)  # 3 steps/epoch x 2 = 6 steps: saves 2, 4, 6
    root = checkpoint_root(out)
    assert [c.step for c in list_checkpoints(root)] == [4, 6]
    (root / ".tmp-step-000008-999").mkdir()  # what a kill during a write leaves behind
    (root / "step-000009").mkdir()  # renamed dirs always hold state.json; one without it is not a checkpoint
    assert [c.step for c in list_checkpoints(root)] == [4, 6]
    state = json.loads((root / "step-000006" / "state.json").read_text())
    assert state["step"] == 6 and len(state["history"]) == 6
    # Tensors and JSON only: nothing in a checkpoint needs the full unpickler (tests/test_safe_loading.py).
    assert {p.name for p in (root / "step-000006").iterdir()} == {
        "adapter.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng.safetensors",
        "rng.json",
        "state.json",
    }
    other = load_config(
        _write_config(tmp_path / "d.yaml", tiny_model_dir, checkpoint_every_steps=2, learning_rate=1e-3)
    )
    with pytest.raises(ValueError, match="resume with the same config"):
        train_adapter(other, records, records.iloc[:0], out, resume=True)


def test_resume_without_checkpoints_starts_from_step_zero(tiny_model_dir: Path, tmp_path: Path) -> None:
    """--resume on a fresh directory is a normal run (so a job can always be restarted with --resume)."""
    records = make_records(8)
    cfg = load_config(_write_config(tmp_path / "c.yaml", tiny_model_dir, max_steps=2))
    a = train_adapter(cfg, records, records.iloc[:0], tmp_path / "a", resume=True)
    b = train_adapter(cfg, records, records.iloc[:0], tmp_path / "b")
    assert a.steps == b.steps == 2
    assert [h.loss for h in a.history] == [h.loss for h in b.history]
    wa, wb = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
