"""CUDA check of the tensors-only checkpoint (issue 17, item 3): the CUDA RNG state saved as safetensors
restores exactly, so a run resumed on a GPU reproduces the unbroken one (dropout draws from the CUDA
generator), and a planted pickle is refused there too with nothing executed.

    python bench/gpu_checkpoint_check.py --out bench/results/gpu_checkpoint.json   # on a machine with CUDA

Needs only torch, transformers, peft, safetensors and numpy (pipeline.train.checkpoint imports nothing
else), so it runs on a bare GPU image. A tiny Llama is built in memory: no files, no hub.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

STEPS, SAVE_AT = 8, 4


def build(device: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    model = get_peft_model(
        LlamaForCausalLM(cfg), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3, target_modules=["q_proj", "v_proj"])
    ).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / (2 * STEPS))
    return model, opt, sched


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler) -> float:
    model.train()
    # The batch is drawn from the CUDA generator too: a wrong RNG restore changes data and dropout.
    ids = torch.randint(0, 256, (4, 32), device="cuda")
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    return float(loss)


def adapter(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items() if "lora_" in k}


class Plant:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/gpu_checkpoint.json"))
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs CUDA"
    torch.use_deterministic_algorithms(True)
    result: dict[str, object] = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ckpt"
        model, opt, sched = build("cuda")
        torch.cuda.manual_seed(1234)
        unbroken = []
        for i in range(1, STEPS + 1):
            unbroken.append(step(model, opt, sched))
            if i == SAVE_AT:
                save_checkpoint(root, i, model, opt, sched, {"epoch": 0}, keep=2)
        reference = adapter(model)
        files = sorted(p.name for p in latest_checkpoint(root).path.iterdir())
        result["checkpoint_files"] = files
        # A fresh process's state: new model, the CUDA generator somewhere else entirely.
        model2, opt2, sched2 = build("cuda")
        torch.cuda.manual_seed(999)
        load_checkpoint(latest_checkpoint(root), model2, opt2, sched2)
        resumed = [step(model2, opt2, sched2) for _ in range(SAVE_AT + 1, STEPS + 1)]
        got = adapter(model2)
        diff = max(float((got[k] - reference[k]).abs().max()) for k in reference)
        result["resume_losses_equal"] = resumed == unbroken[SAVE_AT:]
        result["resume_max_abs_diff"] = diff
        result["unbroken_losses"] = unbroken
        result["resumed_losses"] = resumed
        # The same restore without the CUDA RNG would differ: proves the check can fail.
        model3, opt3, sched3 = build("cuda")
        load_checkpoint(latest_checkpoint(root), model3, opt3, sched3)
        torch.cuda.manual_seed(999)
        [step(model3, opt3, sched3) for _ in range(SAVE_AT + 1, STEPS + 1)]
        result["without_cuda_rng_max_abs_diff"] = max(
            float((adapter(model3)[k] - reference[k]).abs().max()) for k in reference
        )
        # A planted pickle in the optimizer state: refused, nothing runs.
        marker = Path(tmp) / "marker"
        ckpt = latest_checkpoint(root)
        (ckpt.path / "optimizer.pt").write_bytes(pickle.dumps(Plant(marker)))
        try:
            load_checkpoint(ckpt, model3, opt3, sched3)
            result["planted_pickle"] = "LOADED"
        except CheckpointError as e:
            result["planted_pickle"] = f"refused: {e}"
        result["marker_exists"] = marker.exists()
    ok = (
        result["resume_max_abs_diff"] <= 1e-6
        and result["resume_losses_equal"]
        and result["without_cuda_rng_max_abs_diff"] > 1e-6
        and str(result["planted_pickle"]).startswith("refused")
        and not result["marker_exists"]
    )
    result["passed"] = bool(ok)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
