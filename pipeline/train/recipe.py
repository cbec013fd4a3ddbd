"""The LoRA training recipe, top to bottom: setup -> batches -> loss -> accumulate/step -> log -> checkpoint -> save.

Run it through the flow (`lora-pipeline run`), the CLI (`lora-pipeline train`, also under
`torchrun`/`accelerate launch` for DDP) or directly with `train_adapter(config, train, eval, out)`.
The loss of an optimizer step is the mean over every response token in its accumulation group
(on every rank), so gradient accumulation and data parallelism give the same update as one big batch.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from peft import PeftModel
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from pipeline.chat_format import IGNORE_INDEX, Example, build_examples, load_tokenizer
from pipeline.config import PipelineConfig, TrainConfig
from pipeline.train.checkpoint import checkpoint_root, latest_checkpoint, load_checkpoint, save_checkpoint
from pipeline.train.cpu_threads import cpu_threads
from pipeline.train.distributed import (
    DistEnv,
    all_reduce_sum,
    barrier,
    init_distributed,
    local_device,
    teardown,
)
from pipeline.train.loss import ScoredTokenLoss
from pipeline.train.manifest import MANIFEST
from pipeline.train.modeling import (
    attach_lora,
    fingerprint_base,
    flash_attention_available,
    load_base_model,
    resolve_device,
)
from pipeline.train.packing import make_batch
from pipeline.train.replay import MixedExamples, build_replay
from pipeline.train.results import StepLog, TrainResult
from pipeline.train.scoring import mean_token_loss, sequence_nll
from pipeline.train.throughput import model_flops_utilization, peak_memory
from pipeline.train.tokenized import TrainingRows, tokenize_cached

# Most logits values one chunk of the loss holds: 16M (64 MiB in fp32); on CUDA 64M, where bigger chunks keep
# the LM-head matmuls efficient.
LOGITS_CHUNK_ELEMENTS = {"cpu": 2**24, "cuda": 2**26}


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


def epoch_order(n_examples: int, epoch: int, t: TrainConfig) -> np.ndarray:
    """The epoch's example order; a pure function of (seed, epoch), so a resumed run (or every DDP rank) rebuilds
    exactly the same order. 8 bytes per example: the one thing the loader holds per row."""
    g = torch.Generator().manual_seed(t.seed * 1_000_003 + epoch)
    return torch.randperm(n_examples, generator=g).numpy()


def step_group(order: np.ndarray, position: int, t: TrainConfig) -> list[list[int]]:
    """The micro-batches (example indices) of the epoch's `position`-th accumulation group."""
    per_group = t.batch_size * t.grad_accum_steps
    ids = order[position * per_group : (position + 1) * per_group].tolist()
    return [ids[i : i + t.batch_size] for i in range(0, len(ids), t.batch_size)]


def train_adapter(
    config: PipelineConfig,
    train_records: TrainingRows,
    eval_records: TrainingRows,
    out_dir: str | Path,
    *,
    dataset_hash: str = "",
    on_step: Callable[[StepLog], None] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train a LoRA adapter on `train_records` and save it as a PEFT directory with a manifest.

    The rows are a DataFrame of PairRecords or a snapshot split (`Snapshot.hf_split()`): a split is tokenized
    through the Arrow cache and read from memory-mapped files, never held in memory whole.

    With `resume=True` training continues from the newest checkpoint in `<out_dir>.checkpoints/`
    (if there is none, it starts from step 0)."""
    t, lc = config.train, config.lora
    # ---- setup: fail fast on anything the config or data gets wrong, before touching a GPU-hour ----
    if len(train_records) == 0:
        raise ValueError("no training rows: every row was quarantined or the project has no annotations")
    device = resolve_device(t.device)
    if lc.quantize == "nf4" and device.type != "cuda":
        raise ValueError("lora.quantize='nf4' (QLoRA) needs a CUDA device; set lora.quantize: none on CPU")
    env = init_distributed(device)
    device = local_device(device, env)
    seed_everything(t.seed)
    tokenizer = load_tokenizer(config.base_model, trust_remote_code=config.model.trust_remote_code)
    train_ex = _tokenize(tokenizer, train_records, config)
    task_rows = len(train_ex)
    # Replay (train.replay): general-text rows, suite texts excluded, mixed into the same epoch order.
    replay = build_replay(tokenizer, config, task_rows)
    if replay is not None:
        train_ex = MixedExamples(train_ex, replay.examples)
    eval_ex = _tokenize(tokenizer, eval_records, config) if len(eval_records) else []
    pad_id = int(tokenizer.pad_token_id)
    # Flash-attn's varlen kernel takes a whole packed micro-batch as one row; sdpa/eager build a
    # block-diagonal mask whose cost grows with row length², so their rows stop at data.max_length.
    flash = t.packing and flash_attention_available(device)
    model = load_base_model(
        config.base_model,
        device,
        loading=config.model,
        quantize=lc.quantize,
        attn_implementation="flash_attention_2" if flash else None,
    )
    base_fp = fingerprint_base(config.base_model, model, tokenizer)
    model = attach_lora(model, lc, gradient_checkpointing=t.gradient_checkpointing)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    # The forward returns the loss (logits only at scored positions, in chunks; see pipeline/train/loss.py).
    loss_model = ScoredTokenLoss(
        model,
        chunk_elements=LOGITS_CHUNK_ELEMENTS.get(device.type, 2**24),
        replay_loss=t.replay.loss,
        replay_weight=t.replay.weight,
    )
    # DDP all-reduces gradients during backward (bucketed); only the last micro-batch of a group syncs.
    ddp = DistributedDataParallel(loss_model) if env.enabled else loss_model

    # ---- optimizer, schedule, and where a resumed run picks up ----
    per_epoch, total_steps = plan_steps(len(train_ex), config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay, fused=device.type == "cuda")
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(t.warmup_fraction * total_steps), total_steps)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    ckpt_root = checkpoint_root(out_dir)
    history: list[StepLog] = []
    step, prior_wall = 0, 0.0
    ckpt = latest_checkpoint(ckpt_root) if resume else None
    if ckpt is not None:
        _check_resumable(ckpt.state, config, dataset_hash, ckpt.path)
        load_checkpoint(ckpt, model, optimizer, scheduler)
        history = [StepLog(**h) for h in ckpt.state["history"]]
        step, prior_wall = ckpt.step, float(ckpt.state["wall_time_s"])

    # ---- loop: batches -> loss -> accumulate -> clip/step -> log -> eval -> checkpoint ----
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run_tokens, eval_time = 0.0, 0.0
    start = time.perf_counter()
    model.train()
    bar = tqdm(total=total_steps, initial=step, desc="training adapter", unit="step", disable=not env.is_main)
    # The CPU thread governor when LORA_PIPELINE_CPU_THREADS=auto on a CPU run; torch's count is put back after.
    with cpu_threads(device) as step_threads:
        order_epoch, order = -1, np.empty(0, dtype=np.int64)
        while step < total_steps:
            epoch, position = divmod(step, per_epoch)
            if epoch != order_epoch:
                order_epoch, order = epoch, epoch_order(len(train_ex), epoch, t)
            group = step_group(order, position, t)
            step_start = time.perf_counter()
            batches = [[train_ex[i] for i in mb] for mb in group]
            # Normalize by the group's response tokens so accumulation (and DDP) equals one large batch.
            n_tokens = sum(_label_tokens(ex) for mb in batches for ex in mb)
            loss_sum, real, slots = 0.0, 0, 0
            for k, mb in enumerate(batches):
                mine, weight = mb[env.rank :: env.world], 1.0
                if not mine:  # more ranks than examples: run a zero-weight example so every rank syncs
                    mine, weight = mb[:1], 0.0
                batch = make_batch(
                    mine,
                    packing=t.packing,
                    capacity=sum(len(e.input_ids) for e in mine) if flash else config.data.max_length,
                    pad_id=pad_id,
                    device=device,
                )
                sync = not env.enabled or k == len(batches) - 1
                # Only positions whose next token is a response token go through lm_head: prompt and padding
                # logits are never computed, and the scored ones exist one chunk at a time.
                scored = torch.zeros_like(batch.labels, dtype=torch.bool)  # (B, T)
                scored[:, :-1] = batch.labels[:, 1:] != IGNORE_INDEX
                targets = batch.labels[:, 1:][scored[:, :-1]]  # (N,) row-major, as the hidden states are gathered
                replay_at = batch.replay[:, 1:][scored[:, :-1]] if batch.replay is not None else None  # (N,)
                with nullcontext() if sync else ddp.no_sync():
                    with autocast:
                        mb_loss = ddp(
                            input_ids=batch.input_ids,
                            attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids,
                            scored=scored,
                            targets=targets,
                            replay=replay_at,
                        )
                    loss = mb_loss * weight / n_tokens
                    # DDP averages gradients over ranks; each rank holds a part of the sum, so scale back up.
                    (loss * env.world).backward()
                loss_sum += float(loss.detach())
                real += batch.real_tokens if weight else 0
                slots += batch.slots if weight else 0
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_sum = all_reduce_sum(loss_sum, env, device)
            real_all, slots_all = all_reduce_sum(real, env, device), all_reduce_sum(slots, env, device)
            run_tokens += real_all
            step_time = time.perf_counter() - step_start
            eval_loss = float("nan")
            if eval_ex and (step % per_epoch == 0 or step == total_steps or _every(step, t.eval_every_steps)):
                eval_start = time.perf_counter()
                eval_loss = _eval_loss(model, eval_ex, pad_id, config.eval.batch_size, device, env)
                eval_time += time.perf_counter() - eval_start
            log = StepLog(
                step=step,
                epoch=epoch,
                loss=loss_sum,
                learning_rate=lr,
                grad_norm=grad_norm,
                tokens_per_s=real_all / max(step_time, 1e-9),
                padding_fraction=1.0 - real_all / max(slots_all, 1.0),
                eval_loss=eval_loss,
            )
            history.append(log)
            if env.is_main and on_step is not None:
                on_step(log)
            bar.update(1)
            bar.set_postfix(loss=f"{log.loss:.4f}", lr=f"{lr:.2e}", **step_threads())
            if _every(step, t.checkpoint_every_steps) or (t.checkpoint_every_steps and step == total_steps):
                if env.is_main:
                    state = {
                        "epoch": epoch,
                        "config_fingerprint": config.fingerprint(),
                        "dataset_hash": dataset_hash,
                        "train_examples": task_rows,
                        "replay": replay.record() if replay is not None else None,
                        "wall_time_s": prior_wall + time.perf_counter() - start,
                        "history": [asdict(h) for h in history],
                    }
                    save_checkpoint(ckpt_root, step, model, optimizer, scheduler, state, keep=t.keep_checkpoints)
                barrier(env)
    bar.close()
    wall = time.perf_counter() - start
    train_time = wall - eval_time  # throughput and MFU count training only, not held-out scoring

    # ---- held-out loss (unless the last step just measured it), then save adapter + tokenizer + manifest ----
    eval_loss = history[-1].eval_loss if history else float("nan")
    if eval_ex and math.isnan(eval_loss):
        eval_loss = _eval_loss(model, eval_ex, pad_id, config.eval.batch_size, device, env)
    out = Path(out_dir)
    manifest = {
        "base_model": asdict(base_fp),
        "dataset_hash": dataset_hash,
        "config": config.model_dump(mode="json"),
        "config_fingerprint": config.fingerprint(),
        "steps": step,
        # 0 for an uninterrupted run; the checkpoint's step when this run resumed one.
        "resumed_from_step": ckpt.step if ckpt is not None else 0,
        "train_examples": task_rows,
        # Lineage of the replay rows (count, source file and its sha256, suite texts excluded); None when off.
        "replay": replay.record() if replay is not None else None,
        "eval_examples": len(eval_ex),
        "torch": torch.__version__,
        "world_size": env.world,
    }
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    barrier(env)
    teardown(env)
    adapter_file = out / "adapter_model.safetensors"
    return TrainResult(
        adapter_dir=out,
        steps=step,
        history=history,
        eval_loss=eval_loss,
        wall_time_s=prior_wall + wall,
        trainable_params=trainable,
        total_params=total,
        manifest=manifest,
        peak_memory_bytes=peak_memory(device),
        adapter_bytes=adapter_file.stat().st_size if adapter_file.is_file() else 0,
        tokens_per_s=run_tokens / max(train_time, 1e-9),
        mfu=model_flops_utilization(total, run_tokens, train_time, device),
    )


def _tokenize(tokenizer: PreTrainedTokenizerBase, records: TrainingRows, config: PipelineConfig) -> Sequence[Example]:
    """Examples for `records`, from the tokenization cache when it is on."""
    d = config.data
    if not d.tokenize_cache:
        frame = records if isinstance(records, pd.DataFrame) else records.to_pandas()
        return build_examples(tokenizer, frame, d.max_length)
    return tokenize_cached(
        tokenizer, records, d.max_length, cache_dir=d.tokenize_cache_dir, num_proc=d.tokenize_num_proc
    )


def _label_tokens(ex: Example) -> int:
    # Labels are scored shifted by one, so the first position never counts.
    return sum(1 for label in ex.labels[1:] if label != IGNORE_INDEX)


def _every(step: int, n: int | None) -> bool:
    return n is not None and step % n == 0


def _check_resumable(state: dict[str, Any], config: PipelineConfig, dataset_hash: str, path: Path) -> None:
    """A checkpoint only continues the run that wrote it: same config, same data."""
    if state["config_fingerprint"] != config.fingerprint():
        raise ValueError(
            f"checkpoint {path} was written with config {state['config_fingerprint']}, this run has "
            f"{config.fingerprint()}; resume with the same config or start a new output directory"
        )
    if state["dataset_hash"] != dataset_hash:
        raise ValueError(f"checkpoint {path} was trained on dataset {state['dataset_hash']!r}, not {dataset_hash!r}")


def _eval_loss(
    model: PeftModel, eval_ex: Sequence[Example], pad_id: int, batch_size: int, device: torch.device, env: DistEnv
) -> float:
    """Token-weighted held-out loss, computed on the main rank (the unwrapped model: no collectives inside) and
    shared with every rank, so that all ranks take the same branches afterwards (a rank that saw NaN here
    used to evaluate again at the end and wait in a collective the others had left)."""
    loss = 0.0
    if env.is_main:
        scores = sequence_nll(
            model, [(e.input_ids, e.labels) for e in eval_ex], pad_id=pad_id, batch_size=batch_size, device=device
        )
        loss = mean_token_loss(scores)
    return all_reduce_sum(loss, env, device)
