"""Orchestration overhead at the demo's size: the deployments as shipped vs the same stages in one process.

Run (starts its own servers and workers on loopback; 10-20 minutes on 2 busy cores):
    .venv/bin/python bench/orchestration_overhead.py --rounds 3
Writes bench/results/orchestration_overhead.json (raw numbers) and .md. Not run in CI (no timed tests).

Data and config: the demo's (pipeline/demo/demo.yaml, seed_project's demo tasks (demo_pairs(), 400) in a fresh Label Studio,
the demo base of `make demo` (pipeline/demo/demo_base.py, built once into --base-cache and reused); `--base tiny`
uses the tests' tiny model instead, as earlier figures did). Every torch process gets OMP_NUM_THREADS=--threads (default 1),
as the orchestration tests' workers do, so both sides train on the same number of threads.
  deployments   a real `prefect server start` (own PREFECT_HOME), `lora-pipeline deploy --gpu-slots 1`, process
                workers on pools cpu and gpu (PREFECT_WORKER_QUERY_SECONDS=1), `mlflow server` (sqlite) and
                Label Studio; `lora-ingest/nightly` with force=true, timed from run_deployment to the ingest flow
                run's Completed timestamp (it waits for lora-train/gpu). The stage times inside come from the
                Prefect API (flow/task run states) and the MLflow run (train_wall_time_s, forgetting_wall_time_s).
  in-process    a fresh `python` doing the same stages as plain calls, no Prefect and no MLflow: base model
                fingerprint, pull_project, prepare_dataset, annotator feedback, train_adapter on snapshot.split()
                (the train flow's checkpointing on, resume=True, as its train task) and assess_adapter with
                tracking_uri=None (assess_adapter only needs a URI for the champion comparison, so it is skipped).
                Timed as the whole process (interpreter start, imports, stages) and as the stages alone.
  no-change     after the forced rounds, `lora-ingest/nightly` without force (must end Completed with "no new
                annotations since snapshot ..."), submit -> Completed; and `ingest_flow(...)` called in a process
                that already imported it, against the same Prefect server, Label Studio and MLflow.
Fixed costs: `python -c "import ..."` wall times (a flow run process imports its flow module before it is
Running), the worker poll interval, and the 1 s poll of run_deployment in the ingest flow.
Forced round 1 is the demo's situation (no champion, full pull); later forced rounds pull incrementally and compare
against the champion round 1 registered, as a nightly forced rerun does. Medians over rounds are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("DISABLE_PANDERA_IMPORT_WARNING", "True")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO))

DEMO_CONFIG = REPO / "pipeline" / "demo" / "demo.yaml"
INGEST, TRAIN = "lora-ingest/nightly", "lora-train/gpu"
RUN_TIMEOUT_S = 3600.0
IMPORTS = {
    "python -c pass": "pass",
    "import prefect": "import prefect",
    "import flows.ingest_flow": "import flows.ingest_flow",
    "import flows.train_flow": "import flows.train_flow",
}


# ---------------------------------------------------------------- subprocess workers (no Prefect in `stages`)
def worker_stages(spec: dict[str, Any]) -> dict[str, Any]:
    """The flows' stages as plain calls in this process; per-stage wall times."""
    t0 = time.perf_counter()
    from pipeline.base_model import base_model_fingerprint
    from pipeline.config import Settings, load_config
    from pipeline.ingest.client import connect
    from pipeline.ingest.pull import pull_project
    from pipeline.ingest.review_views import update_disagreements_view
    from pipeline.track.promotion import assess_adapter
    from pipeline.train.recipe import train_adapter
    from pipeline.validate.feedback import feedback_for_snapshot
    from pipeline.validate.prepare import prepare_dataset
    from pipeline.validate.snapshot import previous_snapshot
    from pipeline.validate.unchanged import input_fingerprint, mark_feedback_delivered, unchanged_snapshot

    times = {"imports": time.perf_counter() - t0}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        value = fn()
        times[name] = time.perf_counter() - t
        return value

    config = load_config(spec["config"], base_model=spec["base_model"])
    if config.train.checkpoint_every_steps is None:  # as flows.train_flow.with_checkpoints (which imports Prefect)
        every = config.orchestration.checkpoint_every_steps
        config = config.model_copy(update={"train": config.train.model_copy(update={"checkpoint_every_steps": every})})
    root = Path(spec["work_dir"])
    snapshots = str(root / "snapshots")
    settings = Settings()
    t_stages = time.perf_counter()
    fingerprint = timed("base_model_fingerprint", lambda: base_model_fingerprint(config.base_model))
    pull = timed("pull_project", lambda: pull_project(settings, config.labelstudio, snapshots_root=snapshots))
    # As the ingest flow: a pull with nothing new reuses the newest snapshot (this side's snapshots/ persist
    # across rounds, as the deployments' do), otherwise validate, snapshot and send the feedback.
    input_fp = input_fingerprint(pull, config, fingerprint)
    snapshot = timed("reuse_check", lambda: unchanged_snapshot(snapshots, input_fp))
    if snapshot is None:
        prepared = timed(
            "prepare_dataset",
            lambda: prepare_dataset(pull, snapshots, config, previous_snapshot(snapshots), input_fingerprint=input_fp),
        )
        if config.labelstudio.feedback:
            timed(
                "feedback",
                lambda: feedback_for_snapshot(settings, config.labelstudio, pull.project.id, prepared.snapshot.path),
            )
            agreement = prepared.agreement
            ids = None if agreement is None else agreement.disagreements["task_id"].tolist()
            timed(
                "disagreements_view",
                lambda: update_disagreements_view(
                    connect(settings.label_studio_url, settings.require_label_studio_key()), pull.project.id, ids
                ),
            )
        mark_feedback_delivered(prepared.snapshot.path, {"bench": True})
        prepared.validation.raise_for_errors()
        snapshot = prepared.snapshot
    # As the train flow: training reads the memory-mapped Arrow split, the assessment the DataFrame split.
    train_rows, eval_rows = timed("split", snapshot.hf_split)
    result = timed(
        "train_adapter",
        lambda: train_adapter(
            config, train_rows, eval_rows, Path(spec["adapter_dir"]), dataset_hash=snapshot.hash, resume=True
        ),
    )
    train_df, eval_df = snapshot.split()
    assessment = timed(
        "assess_adapter", lambda: assess_adapter(config, result.adapter_dir, eval_df, train_records=train_df)
    )
    times["stages"] = time.perf_counter() - t_stages
    metrics = assessment.metrics()
    return {
        "times_s": times,
        "train_wall_time_s": result.wall_time_s,
        "forgetting_wall_time_s": metrics.get("forgetting_wall_time_s"),
        "train_steps": result.steps,
        "eval_loss": result.eval_loss,
        "rows_train": len(train_df),
        "rows_eval": len(eval_df),
        "gate_passed": assessment.verdict.passed,
        "snapshot_hash": snapshot.hash,
    }


def worker_ingest(spec: dict[str, Any]) -> dict[str, Any]:
    """`ingest_flow(...)` called `rounds` times in this process against the Prefect API in the environment."""
    t0 = time.perf_counter()
    from flows.ingest_flow import ingest_flow

    imports = time.perf_counter() - t0
    calls = []
    for _ in range(spec["rounds"]):
        t = time.perf_counter()
        state = ingest_flow(train_deployment=TRAIN, return_state=True)
        calls.append({"wall_s": time.perf_counter() - t, "state": state.name, "message": state.message or ""})
    return {"imports_s": imports, "calls": calls}


def _run_worker(kind: str, spec: dict[str, Any], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run a worker in a fresh interpreter; its RESULT line plus the process's wall time (start to exit)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", json.dumps(spec)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    log.write_text(proc.stdout + proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} worker failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return {"process_wall_s": wall, **json.loads(lines[-1].removeprefix("RESULT "))}


# ---------------------------------------------------------------- servers and workers
class Stack:
    """Every process this bench starts, each in its own process group, stopped in reverse order."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        from pipeline.ingest.server import spawn_server

        proc = spawn_server(cmd, env, self.logs / f"{name}.log", REPO)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        import psutil

        from pipeline.ingest.server import stop_server

        for proc in reversed(self.procs):
            try:  # flow-run processes a worker started may sit in their own session: stop them by pid too
                kids = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                kids = []
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                stop_server(proc)
            for kid in kids:
                with contextlib.suppress(psutil.NoSuchProcess):
                    kid.kill()

    def tails(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.logs.glob("*.log"))
        )


def _wait(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _pools_ready() -> bool:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import WorkPoolStatus

    with get_client(sync_client=True) as client:
        return all(client.read_work_pool(p).status == WorkPoolStatus.READY for p in ("cpu", "gpu"))


# ---------------------------------------------------------------- measurements through the API
def submit_and_wait(parameters: dict[str, Any]) -> tuple[Any, float, float]:
    """run_deployment(timeout=0) then poll every 0.25 s; (final flow run, submit epoch, seen-final epoch)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    t_submit = time.time()
    run = run_deployment(INGEST, parameters=parameters, timeout=0)
    with get_client(sync_client=True) as client:
        final = _wait(
            f"{INGEST} run {run.id}",
            lambda: (r := client.read_flow_run(run.id)).state is not None and r.state.is_final() and r,
            RUN_TIMEOUT_S,
            0.25,
        )
    return final, t_submit, time.time()


def _states(client: Any, run_id: Any) -> dict[str, float]:
    """First timestamp of each state type of a flow run (SCHEDULED, PENDING, RUNNING, COMPLETED...)."""
    out: dict[str, float] = {}
    for s in sorted(client.read_flow_run_states(run_id), key=lambda s: s.timestamp):
        out.setdefault(s.type.value, s.timestamp.timestamp())
    return out


def _task_runs(client: Any, run_id: Any) -> list[dict[str, Any]]:
    """Task runs of a flow run, by start; waits until every one has an end (task events arrive asynchronously)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def read() -> list[Any] | None:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        return runs if runs and all(r.end_time is not None for r in runs) else None

    runs = _wait(f"the task runs of {run_id}", read, 60, 1.0)
    return [
        {
            "id": str(r.id),
            "task": r.name.rsplit("-", 1)[0],
            "start": r.start_time.timestamp() if r.start_time else None,
            "end": r.end_time.timestamp(),
            "seconds": (r.end_time - r.start_time).total_seconds() if r.start_time else 0.0,
        }
        for r in sorted(runs, key=lambda r: r.start_time or r.end_time)
    ]


def timeline(ingest_run: Any, t_submit: float, mlflow_uri: str, experiment: str) -> dict[str, Any]:
    """Where a forced deployments run's time went: worker pickups, process starts, tasks, hand-offs."""
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        ing_states = _states(client, ingest_run.id)
        ing_tasks = _task_runs(client, ingest_run.id)
        task_ids = {t["id"] for t in ing_tasks}
        trains = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["gpu"])))
        train = next(r for r in trains if str(r.parent_task_run_id) in task_ids)
        tr_states = _states(client, train.id)
        tr_tasks = _task_runs(client, train.id)
    # The task run that stands for the lora-train/gpu subflow spans the whole train run: kept apart.
    waits = [t for t in ing_tasks if t["id"] == str(train.parent_task_run_id)]
    ing_tasks = [t for t in ing_tasks if t["id"] != str(train.parent_task_run_id)]
    ing_end, tr_end = ing_states["COMPLETED"], tr_states["COMPLETED"]
    tr_created = train.created.timestamp()
    before_train = [t for t in ing_tasks if t["end"] <= tr_created]
    segments = {
        "submit_to_ingest_pending (cpu worker pickup)": ing_states["PENDING"] - t_submit,
        "ingest_pending_to_running (process start + imports)": ing_states["RUNNING"] - ing_states["PENDING"],
        "ingest_running_to_train_created (ingest tasks)": tr_created - ing_states["RUNNING"],
        "train_created_to_pending (gpu worker pickup)": tr_states["PENDING"] - tr_created,
        "train_pending_to_running (process start + imports)": tr_states["RUNNING"] - tr_states["PENDING"],
        "train_running_to_completed (train tasks)": tr_end - tr_states["RUNNING"],
        "train_completed_to_ingest_completed (run_deployment poll, up to 1 s)": ing_end - tr_end,
    }
    ml = MlflowClient(mlflow_uri)
    exp = ml.get_experiment_by_name(experiment)
    found = ml.search_runs([exp.experiment_id], filter_string=f"tags.prefect_flow_run_id = '{train.id}'")
    metrics = found[0].data.metrics if found else {}
    return {
        "ingest_flow_run_id": str(ingest_run.id),
        "train_flow_run_id": str(train.id),
        "total_s": ing_end - t_submit,
        "segments_s": segments,
        "ingest_tasks_before_train_s": sum(t["seconds"] for t in before_train),
        "ingest_tasks": ing_tasks,
        "ingest_wait_for_train_task": waits,
        "train_tasks": tr_tasks,
        "ingest_states": ing_states,
        "train_states": tr_states,
        "mlflow_run_id": found[0].info.run_id if found else None,
        # Under the names earlier results used; read from the run under their MLflow names (metric_names.py).
        "mlflow": {
            k: metrics.get(key)
            for k, key in (
                ("train_wall_time_s", "train/wall_time_s"),
                ("forgetting_wall_time_s", "forgetting/wall_time_s"),
                ("train_steps", "train/steps"),
                ("eval_loss", "eval/loss"),
                ("registered_version", "registry/version"),
            )
        },
    }


def step_logging_cost(mlflow_uri: str, steps: int) -> float:
    """Seconds that `steps` calls of the train task's StepLogger take against the same MLflow server, its final
    flush included, in a scratch experiment that change detection never reads."""
    from mlflow.tracking import MlflowClient

    from pipeline.track.step_logger import StepLogger
    from pipeline.train.results import StepLog

    ml = MlflowClient(mlflow_uri)
    exp = ml.get_experiment_by_name("orchestration-bench-probe")
    exp_id = exp.experiment_id if exp else ml.create_experiment("orchestration-bench-probe")
    run_id = ml.create_run(exp_id).info.run_id
    logger = StepLogger(mlflow_uri, run_id)
    t = time.perf_counter()
    for step in range(1, steps + 1):
        logger(StepLog(step=step, epoch=0, loss=1.0, learning_rate=2e-4, grad_norm=1.0, tokens_per_s=1e4))
    logger.flush()
    logger.close()
    seconds = time.perf_counter() - t
    ml.set_terminated(run_id)
    return seconds


def import_times(env: dict[str, str], rounds: int) -> dict[str, list[float]]:
    """Wall time of a fresh `python -c <import>` (what a flow-run process pays before its flow is Running)."""
    out: dict[str, list[float]] = {k: [] for k in IMPORTS}
    for _ in range(rounds):
        for label, code in IMPORTS.items():
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True, capture_output=True)
            out[label].append(time.perf_counter() - t)
    return out


# ---------------------------------------------------------------- the run
def run(
    rounds: int, threads: int, work: Path, base: str, base_cache: Path, cold_workers: bool = False
) -> dict[str, Any]:
    from pipeline.config import load_config
    from pipeline.demo.demo_base import build_demo_base
    from pipeline.demo.runner import seed_project
    from pipeline.demo.tiny_model import build_tiny_model
    from pipeline.ingest.client import connect
    from pipeline.ingest.server import LocalLabelStudio, free_port

    load_start = os.getloadavg()
    logs = work / "logs"
    logs.mkdir(parents=True)
    t = time.perf_counter()
    model_dir = build_demo_base(base_cache) if base == "demo" else build_tiny_model(work / "tiny-model")
    setup = {"base_model": base, "build_base_model_s": time.perf_counter() - t}
    config = load_config(DEMO_CONFIG, base_model=str(model_dir))
    prefect_port, mlflow_port = free_port(), free_port()
    api_url, mlflow_uri = f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}"
    base_env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # The bench's own Prefect client talks to the bench's server: set before Prefect is first imported.
    os.environ.update(
        {
            "PREFECT_HOME": str(work / "prefect-home"),
            "PREFECT_API_URL": api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    stack = Stack(logs)
    try:
        stack.spawn(
            "mlflow",
            [
                *(str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}"),
                *("--artifacts-destination", str(work / "mlartifacts"), "--host", "127.0.0.1"),
                *("--port", str(mlflow_port), "--workers", "1"),
            ],
            base_env,
        )
        env = {
            **base_env,
            "PREFECT_HOME": str(work / "prefect-home"),
            "PREFECT_API_URL": api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
            # SQLite on a busy 2-core machine: wait for the write lock rather than fail a heartbeat (as the tests).
            "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
            "PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT": "30",
            "LORA_PIPELINE_HOME": str(REPO),
            "LORA_PIPELINE_WORK_DIR": str(work / "work"),
            "LORA_PIPELINE_CONFIG": str(DEMO_CONFIG),
            "LORA_PIPELINE_BASE_MODEL": str(model_dir),
            "MLFLOW_TRACKING_URI": mlflow_uri,
            # The deployments run `python -m flows.warm_start`: the worker's python is this venv's, as when activated.
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        stack.spawn(
            "prefect-server",
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port), "--no-ui"],
            env,
        )
        t = time.perf_counter()
        # Its first start runs migrations: minutes on 2 busy cores, past the 240 s default.
        with LocalLabelStudio(data_dir=work / "labelstudio", startup_timeout_s=900) as ls:
            setup["label_studio_start_s"] = time.perf_counter() - t
            env |= {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token}
            _wait("the Prefect server", lambda: _healthy(f"{api_url}/health"), 300)
            _wait("the MLflow server", lambda: _healthy(f"{mlflow_uri}/health"), 300)
            setup["servers_up_s"] = time.perf_counter() - t
            t = time.perf_counter()
            seeded = seed_project(
                connect(ls.url, ls.token), config.labelstudio.project_title, config.labelstudio.categories
            )
            setup |= {"seed_s": time.perf_counter() - t, "tasks": seeded.imported, "annotated": seeded.annotated}
            t = time.perf_counter()
            deployed = subprocess.run(
                [str(BIN / "lora-pipeline"), "deploy", "--gpu-slots", "1"],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            if deployed.returncode != 0:
                raise RuntimeError(f"lora-pipeline deploy failed:\n{deployed.stdout}{deployed.stderr}")
            setup["deploy_s"] = time.perf_counter() - t
            # As compose starts them: `lora-pipeline worker` (Prefect's process worker with a warm process that
            # forks each flow run's engine; --cold-workers: a fresh interpreter per flow run, as before); pool gpu
            # one flow at a time (one GPU per worker).
            cold = ["--cold"] if cold_workers else []
            stack.spawn(
                "worker-cpu", [str(BIN / "lora-pipeline"), "worker", "--pool", "cpu", "--name", "bench-cpu", *cold], env
            )
            stack.spawn(
                "worker-gpu",
                [str(BIN / "lora-pipeline"), "worker", "--pool", "gpu", "--name", "bench-gpu", "--limit", "1", *cold],
                env,
            )
            _wait("both work pools READY", _pools_ready, 300, 1.0)
            setup["workers"] = "cold" if cold_workers else "warm"
            print(f"stack up: {setup}", flush=True)
            fixed = import_times(env, rounds)
            print(f"import times: {fixed}", flush=True)

            forced, in_process = [], []
            for i in range(rounds):
                load = os.getloadavg()
                final, t_submit, t_seen = submit_and_wait({"force": True})
                if not final.state.is_completed():
                    raise RuntimeError(f"forced run ended {final.state.name}: {final.state.message}\n{stack.tails()}")
                forced.append(
                    {"load_at_start": load, "observed_s": t_seen - t_submit}
                    | timeline(final, t_submit, mlflow_uri, config.mlflow.experiment)
                )
                print(f"round {i} deployments: {forced[-1]['total_s']:.1f} s {forced[-1]['segments_s']}", flush=True)
                spec = {
                    "config": str(DEMO_CONFIG),
                    "base_model": str(model_dir),
                    "work_dir": str(work / "inproc"),  # snapshots persist across rounds, as the deployments'
                    "adapter_dir": str(work / "inproc" / f"adapter-{i}"),  # forced: each round trains anew
                }
                in_process.append(
                    {"load_at_start": os.getloadavg()} | _run_worker("stages", spec, env, logs / f"inproc-{i}.out")
                )
                print(f"round {i} in-process: {in_process[-1]['process_wall_s']:.1f} s", flush=True)

            no_change = []
            for _ in range(rounds):
                final, t_submit, t_seen = submit_and_wait({})
                states, tasks = _read_run(final.id)
                no_change.append(
                    {
                        "total_s": states["COMPLETED"] - t_submit if "COMPLETED" in states else None,
                        "observed_s": t_seen - t_submit,
                        "state": final.state.name,
                        "message": final.state.message or "",
                        "pickup_s": states["PENDING"] - t_submit,
                        "process_start_s": states["RUNNING"] - states["PENDING"],
                        "flow_body_s": states["COMPLETED"] - states["RUNNING"] if "COMPLETED" in states else None,
                        "tasks": tasks,
                    }
                )
                print(f"no-change deployments: {no_change[-1]}", flush=True)
            no_change_in_process = _run_worker("ingest", {"rounds": rounds}, env, logs / "ingest-inproc.out")
            print(f"no-change in-process: {no_change_in_process}", flush=True)
            steps = int(statistics.median(r["train_steps"] for r in in_process))
            step_logging = [step_logging_cost(mlflow_uri, steps) for _ in range(rounds)]
            print(f"step logging, {steps} calls: {step_logging}", flush=True)
    except BaseException:
        print(stack.tails(), file=sys.stderr)
        raise
    finally:
        stack.stop()
    return {
        "command": f"python bench/orchestration_overhead.py --rounds {rounds} --threads {threads}",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "load_average_start_end": [load_start, os.getloadavg()],
        "setup": setup,
        "worker_query_seconds": 1.0,
        "import_times_s": fixed,
        "deployments_forced": forced,
        "in_process": in_process,
        "no_change_deployments": no_change,
        "no_change_in_process": no_change_in_process,
        "step_logging": {"calls": steps, "seconds": step_logging},
    }


def _read_run(run_id: Any) -> tuple[dict[str, float], list[dict[str, Any]]]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return _states(client, run_id), _task_runs(client, run_id)


# ---------------------------------------------------------------- summary and report
def _med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    forced, inproc = raw["deployments_forced"], raw["in_process"]
    dep = _med([r["total_s"] for r in forced])
    whole = _med([r["process_wall_s"] for r in inproc])
    stages = _med([r["times_s"]["stages"] for r in inproc])
    no_change = _med([r["total_s"] for r in raw["no_change_deployments"]])
    calls = raw["no_change_in_process"]["calls"]
    no_change_ok = all(
        r["state"] == "Completed" and r["message"].startswith("no new annotations since snapshot")
        for r in [*raw["no_change_deployments"], *calls]
    )
    return {
        "deployments_s": dep,
        "in_process_s": whole,
        "in_process_stages_only_s": stages,
        "overhead": (dep - whole) / dep,
        "overhead_vs_stages_only": (dep - stages) / dep,
        "overhead_per_round": [
            (d["total_s"] - p["process_wall_s"]) / d["total_s"] for d, p in zip(forced, inproc, strict=True)
        ],
        "no_change_deployments_s": no_change,
        "no_change_in_process_call_s": _med([c["wall_s"] for c in calls]),
        "no_change_in_process_first_call_s": calls[0]["wall_s"],
        "no_change_messages_ok": no_change_ok,
        "segments_s": {k: _med([r["segments_s"][k] for r in forced]) for k in forced[0]["segments_s"]},
        "train_tasks_s": _task_medians([r["train_tasks"] for r in forced]),
        "ingest_tasks_s": _task_medians([r["ingest_tasks"] for r in forced]),
        "in_process_times_s": {
            k: _med([r["times_s"].get(k) for r in inproc])
            for k in dict.fromkeys(k for r in inproc for k in r["times_s"])
        },
        "train_wall_time_s": {
            "deployments (MLflow train_wall_time_s)": _med([r["mlflow"]["train_wall_time_s"] for r in forced]),
            "in-process": _med([r["train_wall_time_s"] for r in inproc]),
        },
        "forgetting_wall_time_s": {
            "deployments (MLflow forgetting_wall_time_s)": _med(
                [r["mlflow"]["forgetting_wall_time_s"] for r in forced]
            ),
            "in-process": _med([r["forgetting_wall_time_s"] for r in inproc]),
        },
        "import_times_s": {k: _med(v) for k, v in raw["import_times_s"].items()},
        "step_logging_s": _med(raw["step_logging"]["seconds"]),
        "goals": {"overhead_max": 0.05, "no_change_max_s": 10.0},
    }


def _task_medians(per_round: list[list[dict[str, Any]]]) -> dict[str, float | None]:
    names = list(dict.fromkeys(t["task"] for tasks in per_round for t in tasks))
    # Over the rounds where the task ran (a reused snapshot skips validation and feedback).
    return {
        n: _med(
            [
                sum(t["seconds"] for t in tasks if t["task"] == n)
                for tasks in per_round
                if any(t["task"] == n for t in tasks)
            ]
        )
        for n in names
    }


BASES = {"demo": "the demo base (as `make demo`)", "tiny": "the tests' tiny model"}


def markdown(raw: dict[str, Any], s: dict[str, Any]) -> str:
    (l0, *_), (l1, *_) = raw["load_average_start_end"]
    loads = ", ".join(f"{r['load_at_start'][0]:.2f}" for r in raw["deployments_forced"])
    met = {True: "yes", False: "**no**"}
    n = len(raw["deployments_forced"])
    lines = [
        "# Orchestration overhead: deployments vs the same stages in one process (demo size)\n",
        f"`{raw['command']}`: {BASES[raw['setup'].get('base_model', 'tiny')]}, `pipeline/demo/demo.yaml`, the demo's {raw['setup']['tasks']} tasks "
        f"({raw['in_process'][0]['rows_train']} train / {raw['in_process'][0]['rows_eval']} held-out rows), "
        f"OMP_NUM_THREADS={raw['threads']} everywhere, {raw['cpus']} CPUs shared with other work. Medians of {n} "
        f"round(s). Load average (1 min) {l0:.2f} at start, {l1:.2f} at end; at each forced round's start: {loads}.\n",
        "| measure | value | goal | met |",
        "|---|---|---|---|",
        f"| `lora-ingest/nightly` force=true via deployments, submit -> Completed | {s['deployments_s']:.1f} s | | |",
        f"| same stages in one fresh process (interpreter + imports + stages) | {s['in_process_s']:.1f} s | | |",
        f"| of which the stages alone | {s['in_process_stages_only_s']:.1f} s | | |",
        f"| overhead (deployments - in-process) / deployments | {s['overhead']:.0%} | <= 5% | "
        f"{met[s['overhead'] <= 0.05]} |",
        f"| same, against the stages alone | {s['overhead_vs_stages_only']:.0%} | | |",
        f'| "no new annotations" run via deployment, submit -> Completed | {s["no_change_deployments_s"]:.1f} s '
        f"| <= 10 s | {met[s['no_change_deployments_s'] <= 10.0]} |",
        f"| same `ingest_flow(...)` call in-process (same servers; first call {s['no_change_in_process_first_call_s']:.1f} s) "
        f"| {s['no_change_in_process_call_s']:.1f} s | | |",
        "",
        f"Per-round overhead: {', '.join(f'{o:.0%}' for o in s['overhead_per_round'])}. No-change runs ended Completed "
        f'with "no new annotations since snapshot ...": {"yes" if s["no_change_messages_ok"] else "NO"}.\n',
        "## Where the deployments run's time goes (medians)\n",
        "| segment | s |",
        "|---|---|",
        *(f"| {k} | {v:.1f} |" for k, v in s["segments_s"].items()),
        "",
        "| task (Prefect task run time) | deployments s | in-process counterpart | s |",
        "|---|---|---|---|",
    ]
    ip = s["in_process_times_s"]
    counterpart = {
        "check_base_model": "base_model_fingerprint",
        "pull_annotations": "pull_project",
        "reuse_unchanged_snapshot": "reuse_check",
        "validate_and_snapshot": "prepare_dataset",
        "send_annotator_feedback": "feedback",
        "update_disagreements": "disagreements_view",
        "train": "train_adapter",
        "evaluate": "assess_adapter",
    }
    for name, v in {**s["ingest_tasks_s"], **s["train_tasks_s"]}.items():
        other = counterpart.get(name)
        value = f"{ip[other]:.2f}" if other and ip.get(other) is not None else "-"
        lines.append(f"| {name} | {v:.2f} | {other or '(none: Prefect/MLflow only)'} | {value} |")
    tw, fw = s["train_wall_time_s"], s["forgetting_wall_time_s"]
    lines += [
        f"| (in-process imports of the stage modules) | | imports | {ip['imports']:.2f} |",
        "",
        f"Training loop (train_wall_time_s): {_f(tw['deployments (MLflow train_wall_time_s)'])} s in the train flow "
        f"(step metrics streamed to MLflow) vs {_f(tw['in-process'])} s in-process. Forgetting check: "
        f"{_f(fw['deployments (MLflow forgetting_wall_time_s)'])} s vs {_f(fw['in-process'])} s. The train task "
        f"logs step metrics to MLflow through StepLogger (batched: every 25 steps or 10 s): "
        f"{raw['step_logging']['calls']} steps against the same server, timed on their own after the runs, "
        f"took {s['step_logging_s']:.1f} s ({1000 * s['step_logging_s'] / raw['step_logging']['calls']:.0f} ms "
        "per step), inside the training loop's time.\n",
        *_attribution(s),
        "## Fixed costs\n",
        "| cost | s |",
        "|---|---|",
        *(f'| `python -c "{IMPORTS[k]}"` wall | {v:.2f} |' for k, v in s["import_times_s"].items()),
        f"| worker poll interval (PREFECT_WORKER_QUERY_SECONDS here; Prefect's default is 10) | "
        f"{raw['worker_query_seconds']:.0f} |",
        "| run_deployment poll in the ingest flow while it waits for lora-train/gpu | 1 |",
        "",
        f"Setup (not timed in the figures): {', '.join(f'{k} {v:.1f}' if isinstance(v, float) else f'{k} {v}' for k, v in raw['setup'].items())}.",
        "",
        "Reproduce: `.venv/bin/python bench/orchestration_overhead.py --rounds 3` (raw numbers: "
        "orchestration_overhead.json).",
    ]
    return "\n".join(lines) + "\n"


def _attribution(s: dict[str, Any]) -> list[str]:
    """The overhead split into its larger parts (medians, so the parts need not add up exactly)."""
    seg, ip, tw = s["segments_s"], s["in_process_times_s"], s["train_wall_time_s"]
    starts = sum(v for k, v in seg.items() if "process start" in k)
    pickups = sum(v for k, v in seg.items() if "worker pickup" in k)
    poll = next(v for k, v in seg.items() if "run_deployment poll" in k)
    deployed_loop = tw["deployments (MLflow train_wall_time_s)"]
    loop = math.nan if deployed_loop is None else deployed_loop - tw["in-process"]
    parts = [
        (
            "two flow-run processes starting and importing, less the one import of the in-process run",
            starts - ip["imports"],
        ),
        (
            f"training loop slower inside the train flow (its MLflow step logging alone: {s['step_logging_s']:.1f})",
            loop,
        ),
        ("run_deployment noticing that lora-train/gpu finished", poll),
        ("worker pickups (cpu + gpu)", pickups),
    ]
    total = s["deployments_s"] - s["in_process_s"]
    rest = total - sum(v for _, v in parts if math.isfinite(v))  # an unread part stays in the rest
    return [
        f"Where the {total:.1f} s of overhead goes (medians):\n",
        "| part | s |",
        "|---|---|",
        *(f"| {name} | {v:.1f} |" if math.isfinite(v) else f"| {name} | n/a (not read) |" for name, v in parts),
        f"| the rest (Prefect task/state API calls, MLflow run/metrics/artifacts, registration) | {rest:.1f} |",
        "",
    ]


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for every torch process")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (servers' data, logs)")
    parser.add_argument("--base", choices=tuple(BASES), default="demo", help="base model (default: the demo's)")
    parser.add_argument(
        "--base-cache",
        type=Path,
        default=Path.home() / ".cache" / "lora-pipeline" / "demo-base",
        help="where the demo base is built once and reused",
    )
    parser.add_argument(
        "--cold-workers", action="store_true", help="workers without a warm process (a fresh interpreter per flow run)"
    )
    parser.add_argument("--worker", choices=("stages", "ingest"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        fn = worker_stages if args.worker == "stages" else worker_ingest
        print("RESULT " + json.dumps(fn(json.loads(args.spec))), flush=True)
        return
    work = Path(tempfile.mkdtemp(prefix="orchestration-bench-"))
    try:
        raw = run(args.rounds, args.threads, work, args.base, args.base_cache, args.cold_workers)
    except BaseException:
        print(f"failed; servers' data and logs kept in {work}", file=sys.stderr)
        raise
    summary = summarize(raw)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "orchestration_overhead.json").write_text(json.dumps({"summary": summary, **raw}, indent=2))
    text = markdown(raw, summary)
    (args.out / "orchestration_overhead.md").write_text(text)
    print(text)
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if not summary["no_change_messages_ok"]:
        raise SystemExit("a no-change run did not end Completed with 'no new annotations since snapshot ...'")


if __name__ == "__main__":
    main()
