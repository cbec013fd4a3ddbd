"""Training checkpoints: adapter, optimizer, scheduler, RNG states and data position, written atomically.

Layout: `<checkpoint_root>/step-000012/` with `adapter.safetensors` (trainable weights only),
`optimizer.pt`, `scheduler.pt` (tensors, numbers and strings only: read with `torch.load(weights_only=True)`),
`rng.safetensors` + `rng.json` (torch/CUDA generator states; python and numpy states) and `state.json`
(step, epoch, history, config fingerprint). Nothing is unpickled with the full unpickler: a checkpoint
directory is writable by more hands than the training process, and `train --resume` runs with service
tokens, so a file that would need it (such as the old `rng.pt`) is refused with `CheckpointError`.
A checkpoint is written into a hidden temp directory and renamed into place, so a process killed
mid-write leaves either the previous checkpoints or the new one, never a half-written one.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

_STEP_DIR = re.compile(r"^step-(\d{6,})$")
STATE = "state.json"
RNG_TENSORS = "rng.safetensors"
RNG_JSON = "rng.json"
# Files of older checkpoint formats that only a full unpickler reads: their presence refuses the checkpoint.
PICKLE_ONLY = ("rng.pt",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from safely (a pickle where tensors are expected, a missing file)."""


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


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every RNG the loop draws from (dropout uses torch's global generator), as tensors (torch, CUDA) and
    JSON (python `random`, numpy), so that restoring it never unpickles."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, t in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = t
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    plain = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind,
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
    }
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    py, npy = plain["python"], plain["numpy"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    np.random.set_state(
        (npy["kind"], np.array(npy["keys"], dtype=np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


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
    rng_tensors, rng_plain = rng_state()
    save_file(rng_tensors, tmp / RNG_TENSORS)
    (tmp / RNG_JSON).write_text(json.dumps(rng_plain))
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
    """Restore adapter weights, optimizer, scheduler and RNG states in place. Every file is read (tensors-only
    loaders) before anything is changed, so a refused checkpoint leaves the fresh run untouched."""
    for name in PICKLE_ONLY:
        if (ckpt.path / name).exists():
            raise CheckpointError(
                f"checkpoint {ckpt.path} holds {name}, a pickle (older checkpoint format), which is never loaded; "
                "delete that checkpoint directory to resume from an earlier one or start over"
            )
    device = next(p.device for p in model.parameters() if p.requires_grad)
    weights = _read(ckpt, "adapter.safetensors", lambda f: load_file(f, device=str(device)))
    opt_state = _read(ckpt, "optimizer.pt", lambda f: torch.load(f, map_location=device, weights_only=True))
    sched_state = _read(ckpt, "scheduler.pt", lambda f: torch.load(f, weights_only=True))
    rng_tensors = _read(ckpt, RNG_TENSORS, load_file)
    rng_plain = _read(ckpt, RNG_JSON, lambda f: json.loads(f.read_text()))
    result = set_peft_model_state_dict(model, weights)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"checkpoint {ckpt.path} holds weights this adapter does not have: {unexpected[:5]}")
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(sched_state)
    set_rng_state(rng_tensors, rng_plain)


def _read(ckpt: Checkpoint, name: str, load: Callable[[Path], Any]) -> Any:
    """One checkpoint file through a loader that cannot run code; what it refuses becomes a one-line error."""
    path = ckpt.path / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt.path} has no {name}; it was not written by this version")
    try:
        return load(path)
    except pickle.UnpicklingError as e:
        # torch's weights_only unpickler refuses any global outside its allowlist before calling it. Its message
        # is a page long and suggests weights_only=False; keep only what the file asked for.
        m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"it calls {m.group(1)}" if m else "it is not tensors-only"
        raise CheckpointError(
            f"checkpoint file {path} is refused: {what}, and checkpoints load as tensors only (weights_only)"
        ) from None
    except (OSError, ValueError, RuntimeError, safetensors.SafetensorError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint file {path} cannot be read: {reason}") from None


def _fsync(path: Path) -> None:
    # Files, then the directory entries: a crash after the rename must not expose a checkpoint with
    # missing or empty files.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
