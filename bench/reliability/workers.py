"""What a worker process runs (a fresh `python bench/reliability_report.py --worker KIND`; killed by the bench)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOGGING_STEP_S = 0.02


def _many_records(n: int) -> Any:
    """`n` PairRecords: the packaged sample pairs, repeated with new ids and a batch marker in the prompt."""
    import pandas as pd

    from pipeline.demo.sample_data import max_pairs, sample_records

    base = sample_records(max_pairs(), seed=0)
    parts = []
    for k in range(-(-n // len(base))):
        part = base.copy()
        part["task_id"] += k * len(base)
        part["annotation_id"] += k * len(base)
        part["prompt"] += f" (batch {k})"
        parts.append(part)
    return pd.concat(parts, ignore_index=True).iloc[:n]


def worker_train(spec: dict[str, Any]) -> None:
    """train_adapter that SIGKILLs itself from its step hook at step `kill_at` (as tests/test_train_resume.py)."""
    import pandas as pd

    from pipeline.config import load_config
    from pipeline.train.recipe import train_adapter

    def hook(step_log: Any) -> None:
        print(f"STEP {step_log.step}", flush=True)
        if step_log.step == spec["kill_at"]:
            os.kill(os.getpid(), signal.SIGKILL)

    df = pd.read_parquet(spec["data"])
    config = load_config(spec["config"])
    train_adapter(config, df, df.iloc[:0], spec["out"], dataset_hash=spec["dataset_hash"], on_step=hook)
    print("DONE", flush=True)


def worker_snapshot(spec: dict[str, Any]) -> None:
    """One write_snapshot of `rows` records; prints READY right before it and DONE <seconds> after."""
    from pipeline.validate.snapshot import write_snapshot

    records = _many_records(spec["rows"])
    print("READY", flush=True)
    t = time.perf_counter()
    snap = write_snapshot(records, records.iloc[:0], spec["root"], meta={"source": {"bench": "reliability"}})
    print(f"DONE {time.perf_counter() - t:.4f} {snap.path.name}", flush=True)


def worker_logging(spec: dict[str, Any]) -> None:
    """claim_run, then a StepLogger step every LOGGING_STEP_S for `log_s` seconds (the victims: until killed)."""
    from pipeline.config import load_config
    from pipeline.track.step_logger import StepLogger
    from pipeline.track.work_runs import claim_run
    from pipeline.train.results import StepLog
    from pipeline.validate.snapshot import load_snapshot

    config = load_config(mlflow={"experiment": spec["experiment"]})
    snapshot = load_snapshot(spec["snapshot"])
    print("CLAIMING", flush=True)
    t = time.perf_counter()
    claim = claim_run(spec["uri"], config, snapshot, key=spec["key"], base_fingerprint="reliability-bench")
    print(f"READY {claim.run_id} {time.perf_counter() - t:.4f}", flush=True)
    steps = StepLogger(spec["uri"], claim.run_id)  # as flows/train_tasks.py
    end, step = time.monotonic() + spec["log_s"], 0
    while time.monotonic() < end:
        step += 1
        steps(StepLog(step=step, epoch=0, loss=1.0 / step, learning_rate=1e-4, grad_norm=0.5, tokens_per_s=1e3))
        time.sleep(LOGGING_STEP_S)
    steps.flush(timeout_s=60)
    steps.close()
    print(f"DONE {step}", flush=True)


def worker_promote(spec: dict[str, Any]) -> None:
    """Assess the adapter (not timed), open a run, then promote() it; READY <run> before, DONE <s> <version> after."""
    import pandas as pd

    from pipeline.config import PipelineConfig
    from pipeline.track import tracking
    from pipeline.track.promotion import assess_adapter, promote
    from pipeline.track.store import tracking_client

    uri = spec["uri"]
    config = PipelineConfig.model_validate_json(Path(spec["config"]).read_text())
    held = pd.read_parquet(spec["held"])
    assessment = assess_adapter(config, spec["adapter"], held, tracking_uri=uri)
    client = tracking_client(uri)
    exp = tracking.ensure_experiment(client, uri, config.mlflow.experiment)
    run_id = client.create_run(exp.experiment_id).info.run_id
    print(f"READY {run_id} {assessment.verdict.passed}", flush=True)
    t = time.perf_counter()
    done = promote(
        config, spec["adapter"], assessment, tracking_uri=uri, run_id=run_id, eval_records=held, lock_dir=spec["locks"]
    )
    version = None if done.version is None else done.version.version
    print(f"DONE {time.perf_counter() - t:.4f} {version}", flush=True)


WORKERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "train": worker_train,
    "snapshot": worker_snapshot,
    "logging": worker_logging,
    "promote": worker_promote,
}
