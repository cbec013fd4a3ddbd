"""The LoRA training recipe, top to bottom: setup -> batches -> loss -> accumulate/step -> log -> save.

Run it through the flow (`lora-pipeline run`) or directly with `train_adapter(config, train, eval, out)`.
The loss of an optimizer step is the mean over every response token in its accumulation group,
so gradient accumulation gives the same update as one big batch.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from pipeline.config import PipelineConfig
from pipeline.formatting import IGNORE_INDEX, Example, build_examples
from pipeline.modeling import fingerprint_base, load_base_model, load_tokenizer, resolve_device
from pipeline.scoring import mean_token_loss, pad_batch, sequence_nll, token_nll

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class StepLog:
    """What one optimizer step reports."""

    step: int
    epoch: int
    loss: float
    learning_rate: float
    grad_norm: float
    tokens_per_s: float


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

    @property
    def final_loss(self) -> float:
        return self.history[-1].loss


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def plan_steps(n_examples: int, config: PipelineConfig) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps)."""
    t = config.train
    per_epoch = math.ceil(n_examples / (t.batch_size * t.grad_accum_steps))
    total = per_epoch * t.epochs
    return per_epoch, min(total, t.max_steps) if t.max_steps else total


def train_adapter(
    config: PipelineConfig,
    train_records: pd.DataFrame,
    eval_records: pd.DataFrame,
    out_dir: str | Path,
    *,
    dataset_hash: str = "",
    on_step: Callable[[StepLog], None] | None = None,
) -> TrainResult:
    """Train a LoRA adapter on `train_records` and save it as a PEFT directory with a manifest."""
    t, lc = config.train, config.lora
    # ---- setup: fail fast on anything the config gets wrong, before touching a GPU-hour ----
    if train_records.empty:
        raise ValueError("no training rows: every row was quarantined or the project has no annotations")
    device = resolve_device(t.device)
    seed_everything(t.seed)
    tokenizer = load_tokenizer(config.base_model)
    model = load_base_model(config.base_model, device)
    base_fp = fingerprint_base(config.base_model, model, tokenizer)
    peft_config = PeftLoraConfig(
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=lc.peft_target_modules(),
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, peft_config)
    except ValueError as e:
        raise ValueError(f"lora.target_modules={lc.target_modules!r} does not fit {config.base_model}: {e}") from e
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    train_ex = build_examples(tokenizer, train_records, config.data.max_length)
    eval_ex = build_examples(tokenizer, eval_records, config.data.max_length) if not eval_records.empty else []
    pad_id = int(tokenizer.pad_token_id)

    # ---- optimizer and schedule ----
    _, total_steps = plan_steps(len(train_ex), config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay, fused=device.type == "cuda")
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(t.warmup_fraction * total_steps), total_steps)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    shuffle = torch.Generator().manual_seed(t.seed)

    # ---- loop ----
    history: list[StepLog] = []
    step = 0
    start = time.perf_counter()
    model.train()
    bar = tqdm(total=total_steps, desc="training adapter", unit="step")
    for epoch in range(t.epochs):
        order = torch.randperm(len(train_ex), generator=shuffle).tolist()
        micro = [order[i : i + t.batch_size] for i in range(0, len(order), t.batch_size)]
        groups = [micro[i : i + t.grad_accum_steps] for i in range(0, len(micro), t.grad_accum_steps)]
        for group in groups:
            if step >= total_steps:
                break
            step_start = time.perf_counter()
            batches = [[train_ex[i] for i in mb] for mb in group]
            # Normalize by the group's response tokens so accumulation equals one large batch.
            n_tokens = sum(_label_tokens(ex) for mb in batches for ex in mb)
            loss_sum = 0.0
            for mb in batches:
                input_ids, mask, labels = pad_batch([(e.input_ids, e.labels) for e in mb], pad_id, device)
                with autocast:
                    logits = model(input_ids=input_ids, attention_mask=mask).logits  # (B, T, V)
                loss = token_nll(logits, labels).sum() / n_tokens
                loss.backward()
                loss_sum += float(loss.detach())
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            log = StepLog(
                step=step,
                epoch=epoch,
                loss=loss_sum,
                learning_rate=lr,
                grad_norm=grad_norm,
                tokens_per_s=n_tokens / max(time.perf_counter() - step_start, 1e-9),
            )
            history.append(log)
            if on_step is not None:
                on_step(log)
            bar.update(1)
            bar.set_postfix(loss=f"{log.loss:.4f}", lr=f"{lr:.2e}")
    bar.close()
    wall = time.perf_counter() - start

    # ---- held-out loss, then save adapter + tokenizer + manifest ----
    eval_loss = float("nan")
    if eval_ex:
        scores = sequence_nll(
            model,
            [(e.input_ids, e.labels) for e in eval_ex],
            pad_id=pad_id,
            batch_size=config.eval.batch_size,
            device=device,
        )
        eval_loss = mean_token_loss(scores)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    manifest = {
        "base_model": asdict(base_fp),
        "dataset_hash": dataset_hash,
        "config": config.model_dump(mode="json"),
        "config_fingerprint": config.fingerprint(),
        "steps": step,
        "train_examples": len(train_ex),
        "eval_examples": len(eval_ex),
        "torch": torch.__version__,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return TrainResult(
        adapter_dir=out,
        steps=step,
        history=history,
        eval_loss=eval_loss,
        wall_time_s=wall,
        trainable_params=trainable,
        total_params=total,
        manifest=manifest,
    )


def _label_tokens(ex: Example) -> int:
    # Labels are scored shifted by one, so the first position never counts.
    return sum(1 for label in ex.labels[1:] if label != IGNORE_INDEX)


def load_adapter(base_model: str, adapter_dir: str | Path, device: torch.device) -> PeftModel:
    """The base model with the saved adapter applied (inference mode)."""
    base = load_base_model(base_model, device)
    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
