"""Data parallelism through the standard launcher: `torchrun` with 2 CPU processes (gloo) equals one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from pipeline.config import load_config
from pipeline.demo.tiny_model import build_tiny_model
from pipeline.ingest.server import free_port
from pipeline.train.recipe import train_adapter
from tests.conftest import make_records

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def random_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights are enough to compare two runs, and skip the shared fixture's pretraining."""
    return build_tiny_model(tmp_path_factory.mktemp("ddp-model"), pretrain_steps=0)


@pytest.mark.slow
def test_two_process_ddp_matches_a_single_process_run(random_tiny_model: Path, tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 -m pipeline.cli train` splits each micro-batch across ranks; the summed
    gradients, hence the losses and the adapter, equal the single-process run's (up to float summation order)."""
    records = make_records(16)
    data = tmp_path / "train.parquet"
    records.to_parquet(data)
    cfg = {
        "base_model": str(random_tiny_model),
        "lora": {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "all-linear"},
        "train": {"learning_rate": 5e-3, "epochs": 1, "batch_size": 4, "grad_accum_steps": 2, "device": "cpu"},
    }
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "-m",
        "pipeline.cli",
        "train",
        str(data),
        "--out",
        str(tmp_path / "ddp"),
        "--config",
        str(cfg_path),
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[:3000], proc.stderr[-3000:])
    step_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in step_lines] == ["1", "2"]  # only rank 0 logs; 16 rows / (4 x 2) = 2 steps
    assert json.loads((tmp_path / "ddp" / "manifest.json").read_text())["world_size"] == 2

    single = train_adapter(load_config(cfg_path), records, records.iloc[:0], tmp_path / "single")
    ddp_losses = [float(ln.split()[3]) for ln in step_lines]
    assert ddp_losses == pytest.approx([h.loss for h in single.history], rel=1e-5)
    wa = load_file(tmp_path / "ddp" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "single" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5


@pytest.mark.slow
def test_train_gpus_2_launches_torchrun_from_a_snapshot(
    random_tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train.gpus: 2` (the train flow's path): torchrun runs `lora-pipeline train --resume` on the snapshot's
    frozen split and hands the result back through JSON; it equals the single-process run on the same split."""
    from pipeline.train.launch import train_with_torchrun
    from pipeline.validate.snapshot import write_snapshot

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    snapshot = write_snapshot(make_records(20), make_records(20).iloc[:0], tmp_path / "snaps", meta={})
    cfg = load_config(
        None,
        base_model=str(random_tiny_model),
        lora={"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "all-linear"},
        train={"learning_rate": 5e-3, "epochs": 1, "batch_size": 4, "grad_accum_steps": 2, "device": "cpu", "gpus": 2},
    )
    result = train_with_torchrun(cfg, snapshot.path, tmp_path / "work" / "adapter")
    assert result.manifest["world_size"] == 2 and result.manifest["dataset_hash"] == snapshot.hash
    assert result.adapter_dir == tmp_path / "work" / "adapter" and len(result.history) == result.steps

    train_df, eval_df = snapshot.split()
    single = train_adapter(cfg, train_df, eval_df, tmp_path / "single", dataset_hash=snapshot.hash)
    assert [h.loss for h in result.history] == pytest.approx([h.loss for h in single.history], rel=1e-5)
    wa = load_file(result.adapter_dir / "adapter_model.safetensors")
    wb = load_file(single.adapter_dir / "adapter_model.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 5e-5  # summation order, amplified by Adam

    broken = cfg.model_copy(update={"base_model": str(tmp_path / "no-model")})
    with pytest.raises(RuntimeError, match="torchrun training exited with"):
        train_with_torchrun(broken, snapshot.path, tmp_path / "broken" / "adapter")
