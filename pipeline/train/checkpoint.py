"""Training checkpoints: adapter, optimizer, scheduler, RNG states and data position, written atomically.

Layout: `<checkpoint_root>/step-000012/` with `adapter.safetensors` (trainable weights only),
`optimizer.pt`, `scheduler.pt`, `rng.pt` and `state.json` (step, epoch, history, config fingerprint).
A checkpoint is written into a hidden temp directory and renamed into place, so a process killed
mid-write leaves either the previous checkpoints or the new one, never a half-written one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

_STEP_DIR = re.compile(r"^step-(\d{6,})$")
STATE = "state.json"


@dataclass(frozen=True)
class Checkpoint:
    """A saved training position."""

    path: Path
    step: int
    state: dict[str, Any]


def checkpoint_root(out_dir: str | Path) -> Path:
    """Checkpoints live next to the adapter directory, so the adapter directory holds only the adapter."""
    out = Path(out_dir)
    return out.parent / f"{out.name}.checkpoints"


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from (dropout uses torch's global generator)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    root: Path,
    step: int,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
    *,
    keep: int,
) -> Path:
    """Write checkpoint `step` atomically (temp dir + rename), then delete all but the `keep` newest."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
    save_file(weights, tmp / "adapter.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / STATE).write_text(json.dumps({"step": step, **state}, indent=2))
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    if final.exists():  # a resumed run re-reaching a step it had saved before the kill
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old.path)
    return final


def list_checkpoints(root: Path) -> list[Checkpoint]:
    """Complete checkpoints under `root`, oldest first (temp dirs of killed writes are ignored)."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / STATE).is_file():
            found.append(Checkpoint(path=p, step=int(m.group(1)), state=json.loads((p / STATE).read_text())))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(root: Path) -> Checkpoint | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(
    ckpt: Checkpoint,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """Restore adapter weights, optimizer, scheduler and RNG states in place."""
    device = next(p.device for p in model.parameters() if p.requires_grad)
    weights = load_file(ckpt.path / "adapter.safetensors", device=str(device))
    result = set_peft_model_state_dict(model, weights)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"checkpoint {ckpt.path} holds weights this adapter does not have: {unexpected[:5]}")
    optimizer.load_state_dict(torch.load(ckpt.path / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt.path / "scheduler.pt", weights_only=True))
    # RNG states hold numpy/python tuples, so they need the full unpickler; the file is our own.
    set_rng_state(torch.load(ckpt.path / "rng.pt", weights_only=False))


def _fsync(path: Path) -> None:
    # Files, then the directory entries: a crash after the rename must not expose a checkpoint with
    # missing or empty files.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
