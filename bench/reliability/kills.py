"""Section 1: kills survived (training, snapshot, logging, promotion), each victim a worker process SIGKILLed."""

from __future__ import annotations

import hashlib
import random
import signal
import time
from pathlib import Path
from typing import Any

from bench.reliability.common import Child, log, spread

TRAIN_ROWS, TRAIN_BATCH, TRAIN_EPOCHS, CHECKPOINT_EVERY = 40, 4, 2, 2
SNAPSHOT_ROWS = 3000
LOGGING_AFTER_CLAIM_S = 3.0
PROMOTION_MODEL = "reliability-bench"
SNAPSHOT_FILES = {"snapshot.parquet", "quarantine.parquet", "snapshot.json", "validation_report.md", "hf"}


def kills_training(work: Path, model_dir: Path, n: int, rng: random.Random) -> dict[str, Any]:
    import yaml
    from safetensors.torch import load_file

    from pipeline.config import load_config
    from pipeline.demo.sample_data import sample_records
    from pipeline.train.checkpoint import checkpoint_root, list_checkpoints
    from pipeline.train.recipe import train_adapter

    root = work / "kill-train"
    root.mkdir()
    records = sample_records(TRAIN_ROWS)
    data = root / "train.parquet"
    records.to_parquet(data)
    cfg_path = root / "cfg.yaml"
    train = {"learning_rate": 5e-3, "epochs": TRAIN_EPOCHS, "batch_size": TRAIN_BATCH, "seed": 3, "device": "cpu"}
    train |= {"checkpoint_every_steps": CHECKPOINT_EVERY, "keep_checkpoints": 2}
    lora = {"r": 4, "alpha": 8.0, "dropout": 0.1, "target_modules": "all-linear"}
    cfg_path.write_text(yaml.safe_dump({"base_model": str(model_dir), "lora": lora, "train": train}))
    config = load_config(cfg_path)
    total = TRAIN_ROWS // TRAIN_BATCH * TRAIN_EPOCHS
    dataset_hash = f"file:{data.name}"
    straight = train_adapter(config, records, records.iloc[:0], root / "straight", dataset_hash=dataset_hash)
    reference = load_file(root / "straight" / "adapter_model.safetensors")
    points = rng.sample(range(1, total + 1), min(n, total)) + [rng.randint(1, total) for _ in range(n - total)]
    trials = []
    for i, kill_at in enumerate(points):
        out = root / f"killed-{i}"
        spec = {"config": str(cfg_path), "data": str(data), "out": str(out), "kill_at": kill_at}
        child = Child("train", spec | {"dataset_hash": dataset_hash}, root / f"killed-{i}.log")
        rc = child.finish()
        steps_seen = [int(ln.split()[1]) for ln in child.lines if ln.startswith("STEP ")]
        trial: dict[str, Any] = {
            "kill_at_step": kill_at,
            "returncode": rc,
            "last_step_seen": steps_seen[-1] if steps_seen else None,
            "adapter_before_resume": (out / "adapter_model.safetensors").exists(),
            "checkpoints_at_kill": [c.step for c in list_checkpoints(checkpoint_root(out))],
        }
        try:
            resumed = train_adapter(config, records, records.iloc[:0], out, dataset_hash=dataset_hash, resume=True)
            weights = load_file(out / "adapter_model.safetensors")
            same_keys = weights.keys() == reference.keys()
            diff = max(float((weights[k] - reference[k]).abs().max()) for k in reference) if same_keys else None
            trial |= {"resumed_steps": resumed.steps, "same_keys": same_keys, "max_abs_diff": diff}
        except Exception as e:  # a failed resume is the outcome this row counts
            trial["error"] = f"{type(e).__name__}: {e}"
        trial["killed"] = rc == -signal.SIGKILL and not trial["adapter_before_resume"]
        trial["survived"] = (
            trial["killed"]
            and trial.get("resumed_steps") == total
            and trial.get("max_abs_diff") is not None
            and trial["max_abs_diff"] <= 1e-6
        )
        trials.append(trial)
        log(f"kill training {i + 1}/{n}: step {kill_at} -> {trial}")
    return {"total_steps": total, "reference_steps": straight.steps, "trials": trials}


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _visible_snapshots(root: Path) -> dict[str, str | None]:
    """Every directory not named as a temp dir (a leading dot) -> None if it is a whole snapshot, else why not."""
    from pipeline.validate.snapshot import load_snapshot

    found: dict[str, str | None] = {}
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        missing = SNAPSHOT_FILES - {c.name for c in p.iterdir()}
        if missing:
            found[p.name] = f"missing {sorted(missing)}"
            continue
        try:
            load_snapshot(p)
            found[p.name] = None
        except Exception as e:  # any failure to load (bad parquet, bad hash) is what this check counts
            found[p.name] = f"{type(e).__name__}: {e}"
    return found


def kills_snapshot(work: Path, n: int, rng: random.Random) -> dict[str, Any]:
    root = work / "kill-snapshot"
    snaps = root / "snapshots"
    snaps.mkdir(parents=True)
    unkilled = []  # the first is the previous snapshot; the second times a write with warm caches, as the kills
    for k in range(2):
        first = Child("snapshot", {"rows": SNAPSHOT_ROWS, "root": str(snaps)}, root / f"unkilled-{k}.log")
        if first.finish() != 0 or first.line("DONE") is None:
            raise RuntimeError(f"unkilled snapshot write failed:\n{first.log_path.read_text()[-3000:]}")
        _, seconds, name = str(first.line("DONE")).split()
        unkilled.append((float(seconds), name))
    previous = unkilled[0][1]
    write_s = min(s for s, _ in unkilled)
    before = _tree_digest(snaps / previous)
    trials = []
    for i, delay in enumerate(f * write_s for f in spread(n, rng)):
        names_before = {p.name for p in snaps.iterdir()}
        child = Child("snapshot", {"rows": SNAPSHOT_ROWS, "root": str(snaps)}, root / f"killed-{i}.log")
        child.wait_for("READY")
        child.kill_after(delay)
        new = sorted({p.name for p in snaps.iterdir()} - names_before)
        visible = _visible_snapshots(snaps)
        trial = {
            "delay_s": delay,
            "returncode": child.proc.returncode,
            "finished_before_kill": child.line("DONE") is not None,
            "new_snapshots": [p for p in new if not p.startswith(".")],
            "temp_dirs_left": [p for p in new if p.startswith(".")],
            "half_written_visible": {k: v for k, v in visible.items() if v is not None},
            "previous_unchanged": (snaps / previous).is_dir() and _tree_digest(snaps / previous) == before,
        }
        trial["survived"] = not trial["half_written_visible"] and trial["previous_unchanged"]
        trials.append(trial)
        log(f"kill snapshot {i + 1}/{n}: {delay:.3f} s -> {trial}")
    return {
        "rows": SNAPSHOT_ROWS,
        "unkilled_writes_s": [s for s, _ in unkilled],
        "unkilled_write_s": write_s,
        "previous": previous,
        "trials": trials,
    }


def kills_logging(work: Path, n: int, rng: random.Random) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from pipeline.demo.sample_data import sample_records
    from pipeline.track.orphans import TAG_KILLED_REASON, mark_orphaned_runs
    from pipeline.track.store import ensure_store
    from pipeline.validate.snapshot import write_snapshot

    root = work / "kill-logging"
    root.mkdir()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ensure_store(uri)
    records = sample_records(24)
    snap = write_snapshot(records, records.iloc[:0], root / "snapshots", meta={"source": {"project_id": 1}})
    spec = {"uri": uri, "snapshot": str(snap.path), "log_s": 1.0, "experiment": "calibration", "key": "calibration"}
    first = Child("logging", spec, root / "unkilled.log")
    if first.finish() != 0 or first.line("DONE") is None:
        raise RuntimeError(f"unkilled logging run failed:\n{first.log_path.read_text()[-3000:]}")
    claim_s = float(str(first.line("READY")).split()[2])
    window_s = claim_s + LOGGING_AFTER_CLAIM_S
    client = MlflowClient(uri)
    trials = []
    for i, delay in enumerate(f * window_s for f in spread(n, rng)):
        experiment = f"kill-{i}"
        spec = {"uri": uri, "snapshot": str(snap.path), "log_s": 3600.0, "experiment": experiment, "key": f"k{i}"}
        child = Child("logging", spec, root / f"killed-{i}.log")
        child.wait_for("CLAIMING")
        child.kill_after(delay)
        swept = mark_orphaned_runs(uri, experiment)
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], max_results=100) if exp else []
        states = [
            {
                "run_id": r.info.run_id,
                "status": r.info.status,
                "killed_reason": r.data.tags.get(TAG_KILLED_REASON),
                "steps_arrived": len(client.get_metric_history(r.info.run_id, "train/loss")),
            }
            for r in runs
        ]
        trial = {
            "delay_s": delay,
            "returncode": child.proc.returncode,
            "claimed_before_kill": child.line("READY") is not None,
            "swept": len(swept),
            "runs": states,
        }
        trial["survived"] = all(s["status"] == "KILLED" and s["killed_reason"] for s in states)
        trials.append(trial)
        log(f"kill logging {i + 1}/{n}: {delay:.3f} s -> {trial}")
    return {"claim_s": claim_s, "window_s": window_s, "trials": trials}


def _versions_without_adapter(uri: str, dest: Path) -> tuple[int, list[str]]:
    """(versions in the registry, those whose download lacks peft/adapter_model.safetensors or fails)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.track.store import tracking_client

    mlflow.set_tracking_uri(uri)
    versions = tracking_client(uri).search_model_versions(f"name = '{PROMOTION_MODEL}'")
    bad = []
    for v in versions:
        target = dest / f"v{v.version}"
        try:
            local = Path(mlflow.artifacts.download_artifacts(f"models:/{PROMOTION_MODEL}/{v.version}", dst_path=target))
        except (MlflowException, OSError) as e:
            bad.append(f"{v.version}: {type(e).__name__}: {e}")
            continue
        if not (local / "peft" / "adapter_model.safetensors").is_file():
            bad.append(f"{v.version}: no peft/adapter_model.safetensors")
    return len(versions), bad


def kills_promotion(work: Path, model_dir: Path, n: int, rng: random.Random) -> dict[str, Any]:
    from pipeline.config import load_config
    from pipeline.demo.sample_data import sample_records
    from pipeline.track.store import ensure_store, tracking_client
    from pipeline.train.recipe import train_adapter

    root = work / "kill-promotion"
    root.mkdir()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ensure_store(uri)
    records = sample_records(64)
    train_df, held = records.iloc[:48], records.iloc[48:]
    # tests/test_registry.py's adapter that passes the gate; `candidate` alias, so every promotion registers.
    config = load_config(
        base_model=str(model_dir),
        lora={"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "qv"},
        train={"learning_rate": 1e-3, "epochs": 2, "batch_size": 8},
        eval={"generation_samples": 2, "max_new_tokens": 8},
        gate={"registered_model": PROMOTION_MODEL},
        mlflow={"experiment": "reliability-promotion"},
    )
    result = train_adapter(config, train_df, held, root / "adapter")
    (root / "cfg.json").write_text(config.model_dump_json())
    held.to_parquet(root / "held.parquet")
    spec = {
        "uri": uri,
        "config": str(root / "cfg.json"),
        "held": str(root / "held.parquet"),
        "adapter": str(result.adapter_dir),
        "locks": str(root / "locks"),
    }

    def unkilled(name: str) -> tuple[float, str]:
        child = Child("promote", spec, root / f"{name}.log")
        if child.finish(timeout_s=600) != 0 or child.line("DONE") is None:
            raise RuntimeError(f"{name} promotion failed:\n{child.log_path.read_text()[-3000:]}")
        _, seconds, version = str(child.line("DONE")).split()
        return float(seconds), version

    first_promote_s, first_version = unkilled("unkilled")
    if first_version == "None":
        raise RuntimeError("the unkilled promotion registered nothing: the tiny adapter did not pass the gate")
    latest_s = first_promote_s
    client = tracking_client(uri)
    trials = []
    for i, fraction in enumerate(spread(n, rng)):
        delay = fraction * latest_s  # the latest unkilled promote() (the first one also creates the model)
        count_before = len(client.search_model_versions(f"name = '{PROMOTION_MODEL}'"))
        child = Child("promote", spec, root / f"killed-{i}.log")
        run_id = child.wait_for("READY").split()[1]
        child.kill_after(delay)
        versions, bad = _versions_without_adapter(uri, root / f"downloads-{i}")
        status = client.get_run(run_id).info.status
        trial: dict[str, Any] = {
            "delay_s": delay,
            "window_s": latest_s,
            "returncode": child.proc.returncode,
            "finished_before_kill": child.line("DONE") is not None,
            "registered_by_killed": versions - count_before,
            "versions": versions,
            "versions_without_adapter": bad,
            "killed_run_status": status,
        }
        t = time.perf_counter()
        try:
            follow_s, follow_version = unkilled(f"after-{i}")
            trial |= {"following_promote_s": follow_s, "following_version": follow_version}
            latest_s = follow_s
        except RuntimeError as e:  # a stuck lock or a broken registry: the outcome this row counts
            trial["following_error"] = str(e)[-2000:]
        trial["following_process_s"] = time.perf_counter() - t
        trial["survived"] = not bad and status != "FINISHED" and trial.get("following_version") not in (None, "None")
        trials.append(trial)
        log(f"kill promotion {i + 1}/{n}: {delay:.3f} s -> {trial}")
    versions, bad = _versions_without_adapter(uri, root / "downloads-final")
    return {
        "unkilled_promote_s": first_promote_s,
        "trials": trials,
        "final_versions": versions,
        "final_versions_without_adapter": bad,
    }
