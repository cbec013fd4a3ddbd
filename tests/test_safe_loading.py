"""Only safe formats load: a pickle planted in a checkpoint, a base model or an adapter is refused, and runs nothing.

Each planted file is a real exploit: unpickling it calls `builtins.exec`, which creates a marker file. Every
test asserts the one-line error AND that the marker does not exist afterwards.
"""

from __future__ import annotations

import builtins
import json
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from pipeline.base_model import base_model_fingerprint
from pipeline.config import ModelConfig, PipelineConfig, load_config
from pipeline.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pipeline.train.modeling import (
    UnsafeFormatError,
    add_adapter,
    apply_adapter,
    load_adapter,
    load_base_model,
)

CPU = torch.device("cpu")


class _Exploit:
    """Unpickling this runs `exec`, which touches `marker`: what an attacker would plant."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _plant(path: Path, marker: Path) -> None:
    """Write an exploit where a tensors file is expected, in torch's own container format."""
    torch.save({"state": _Exploit(marker)}, path)


def test_the_planted_pickle_is_a_real_exploit(tmp_path: Path) -> None:
    """Guards the other tests: a full unpickler does run the payload (so 'no marker' means 'refused')."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Exploit(marker)))
    assert marker.exists()


def test_config_defaults_are_safe() -> None:
    cfg = PipelineConfig()
    assert cfg.model.allow_pickle_weights is False
    assert cfg.model.trust_remote_code is False
    # Loading permissions do not change what is trained, so they do not trigger retraining.
    opted_in = PipelineConfig(model=ModelConfig(allow_pickle_weights=True, trust_remote_code=True))
    assert opted_in.training_fingerprint() == cfg.training_fingerprint()


def test_model_section_loads_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  allow_pickle_weights: true\n")
    assert load_config(path).model == ModelConfig(allow_pickle_weights=True)
    path.write_text("model:\n  allow_pickle: true\n")
    with pytest.raises(ValueError, match="allow_pickle"):
        load_config(path)


# ---- checkpoints ----


def _checkpoint(tiny_model_dir: Path, root: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    """A real checkpoint of a tiny LoRA model after one optimizer step; returns the objects it restores into."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model = get_peft_model(base, PeftLoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model(input_ids=torch.tensor([[1, 5, 6, 7]]), labels=torch.tensor([[1, 5, 6, 7]])).loss.backward()
    optimizer.step()
    scheduler.step()
    save_checkpoint(root, 1, model, optimizer, scheduler, {"history": []}, keep=1)
    return model, optimizer, scheduler


def test_checkpoint_holds_tensors_and_json_only_and_round_trips_rng(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, optimizer, scheduler = _checkpoint(tiny_model_dir, tmp_path / "ck")
    ckpt = latest_checkpoint(tmp_path / "ck")
    assert ckpt is not None
    assert {p.name for p in ckpt.path.iterdir()} == {
        "adapter.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng.safetensors",
        "rng.json",
        "state.json",
    }
    for name in ("optimizer.pt", "scheduler.pt"):
        torch.load(ckpt.path / name, weights_only=True)  # loads without the full unpickler
    json.loads((ckpt.path / "rng.json").read_text())

    tensors, plain = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(3)  # move every generator on
    set_rng_state(tensors, plain)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])

    load_checkpoint(ckpt, model, optimizer, scheduler)  # a new-format checkpoint resumes


@pytest.mark.parametrize("planted", ["rng.pt", "optimizer.pt", "scheduler.pt"])
def test_checkpoint_with_a_planted_pickle_is_refused_and_runs_nothing(
    tiny_model_dir: Path, tmp_path: Path, planted: str
) -> None:
    model, optimizer, scheduler = _checkpoint(tiny_model_dir, tmp_path / "ck")
    ckpt = latest_checkpoint(tmp_path / "ck")
    assert ckpt is not None
    marker = tmp_path / "ran"
    _plant(ckpt.path / planted, marker)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=planted.replace(".", r"\.")) as err:
        load_checkpoint(ckpt, model, optimizer, scheduler)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    # Refused before anything was restored: the model is as it was.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_train_resume_refuses_an_old_format_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Through the real entry point: `train_adapter(resume=True)` stops at a checkpoint holding rng.pt."""
    from pipeline.train.checkpoint import checkpoint_root
    from pipeline.train.recipe import train_adapter
    from tests.conftest import make_records

    records = make_records(8)
    cfg = PipelineConfig(
        base_model=str(tiny_model_dir),
        train={"device": "cpu", "batch_size": 4, "max_steps": 2, "checkpoint_every_steps": 1},
    )
    out = tmp_path / "a"
    train_adapter(cfg, records, records.iloc[:0], out)
    ckpt = latest_checkpoint(checkpoint_root(out))
    assert ckpt is not None
    marker = tmp_path / "ran"
    _plant(ckpt.path / "rng.pt", marker)
    with pytest.raises(CheckpointError, match=r"rng\.pt"):
        train_adapter(cfg, records, records.iloc[:0], out, resume=True)
    assert not marker.exists()


# ---- base models ----


def _pickle_only_copy(tiny_model_dir: Path, dest: Path) -> Path:
    """The tiny model's config and tokenizer files, without its safetensors weights."""
    dest.mkdir()
    for p in tiny_model_dir.iterdir():
        if p.is_file() and p.suffix != ".safetensors":
            shutil.copy(p, dest / p.name)
    return dest


def test_pickle_only_base_model_is_refused_and_runs_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = _pickle_only_copy(tiny_model_dir, tmp_path / "base")
    marker = tmp_path / "ran"
    _plant(model_dir / "pytorch_model.bin", marker)
    with pytest.raises(UnsafeFormatError, match=r"model\.allow_pickle_weights") as err:
        load_base_model(str(model_dir), CPU)
    assert str(model_dir) in str(err.value) and "\n" not in str(err.value)
    # The check before any pull (flows/ingest_tasks.check_base_model) refuses it too, without loading it.
    with pytest.raises(UnsafeFormatError, match=r"model\.allow_pickle_weights"):
        base_model_fingerprint(str(model_dir))
    assert base_model_fingerprint(str(model_dir), allow_pickle_weights=True).startswith("local:")
    assert not marker.exists()
    # Opting in still never runs the payload: transformers reads .bin files with torch's weights_only loader.
    with pytest.raises(Exception):  # noqa: B017 - transformers' own error type; the point is the marker
        load_base_model(str(model_dir), CPU, loading=ModelConfig(allow_pickle_weights=True))
    assert not marker.exists()


def test_opt_in_flag_loads_a_pickle_only_base_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A harmless pickle state dict (a plain torch.save of the weights) loads with model.allow_pickle_weights."""
    model_dir = _pickle_only_copy(tiny_model_dir, tmp_path / "base")
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    torch.save(reference.state_dict(), model_dir / "pytorch_model.bin")
    loaded = load_base_model(str(model_dir), CPU, loading=ModelConfig(allow_pickle_weights=True))
    want = reference.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())


def test_safetensors_base_model_loads_by_default(tiny_model_dir: Path) -> None:
    model = load_base_model(str(tiny_model_dir), CPU)
    weights = load_file(next(tiny_model_dir.glob("*.safetensors")))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items() if k in state)


# ---- adapters ----


def _pickle_only_adapter(tiny_model_dir: Path, dest: Path, marker: Path) -> Path:
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    get_peft_model(base, PeftLoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])).save_pretrained(dest)
    (dest / "adapter_model.safetensors").unlink()
    _plant(dest / "adapter_model.bin", marker)
    return dest


def test_pickle_only_adapter_is_refused_and_runs_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    adapter = _pickle_only_adapter(tiny_model_dir, tmp_path / "adapter", marker)
    for load in (
        lambda: load_adapter(str(tiny_model_dir), adapter, CPU),
        lambda: apply_adapter(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), adapter),
    ):
        with pytest.raises(UnsafeFormatError, match=r"adapter_model\.bin") as err:
            load()
        assert str(adapter) in str(err.value) and "\n" not in str(err.value)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    peft_model = get_peft_model(base, PeftLoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    with pytest.raises(UnsafeFormatError, match=r"adapter_model\.safetensors"):
        add_adapter(peft_model, adapter, "champion_under_test")
    assert not marker.exists()
    # The same adapter saved as safetensors loads through both paths.
    good = tmp_path / "good"
    peft_model.save_pretrained(good)
    add_adapter(peft_model, good, "champion_under_test")
    assert "champion_under_test" in peft_model.peft_config
    apply_adapter(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), good)
