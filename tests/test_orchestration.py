"""The deployments as shipped, against a real `prefect server start`, two process workers (pools cpu and gpu),
real Label Studio and MLflow: placement, change detection, the webhook trigger, and resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings
from safetensors.torch import load_file

from pipeline.config import PipelineConfig
from pipeline.demo.runner import seed_project
from pipeline.ingest.client import connect, iter_tasks, submit_annotation
from pipeline.ingest.server import LocalLabelStudio, free_port, spawn_server, stop_server
from pipeline.track.work_runs import work_key
from pipeline.train.checkpoint import checkpoint_root, list_checkpoints
from pipeline.train.recipe import train_adapter
from pipeline.train.work_lock import lock_holder
from pipeline.validate.snapshot import load_snapshot

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT = "orchestration-e2e"
EXPERIMENT = "orchestration-test"
SECRET = "orchestration-test-secret"


def _wait(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@dataclass
class Stack:
    api_url: str
    env: dict[str, str]
    work_dir: Path
    config: Path
    mlflow_uri: str
    label_studio: LocalLabelStudio
    logs: Path

    def flow_runs(self, deployment: str) -> list[FlowRun]:
        """Runs of `<flow>/<deployment>`, oldest first."""
        name = deployment.split("/", 1)[1]
        with temporary_settings({PREFECT_API_URL: self.api_url}), get_client(sync_client=True) as client:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])))
        return sorted(runs, key=lambda r: r.created or 0)

    def read(self, run_id: Any) -> FlowRun:
        with temporary_settings({PREFECT_API_URL: self.api_url}), get_client(sync_client=True) as client:
            return client.read_flow_run(run_id)

    def run(self, deployment: str, parameters: dict[str, Any] | None = None, timeout: float = 600) -> FlowRun:
        with temporary_settings({PREFECT_API_URL: self.api_url}):
            return run_deployment(deployment, parameters=parameters or {}, timeout=timeout, poll_interval=1)

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.logs.glob("*.log"))
        )


@pytest.fixture(scope="module")
def stack(
    label_studio: LocalLabelStudio, mlflow_server: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Prefect server + `lora-pipeline deploy` + a cpu and a gpu process worker, sharing one work volume."""
    root = tmp_path_factory.mktemp("orchestration")
    logs = root / "logs"
    logs.mkdir()
    config = root / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "labelstudio": {"project_title": PROJECT},
                "lora": {"r": 4, "alpha": 8.0, "target_modules": "all-linear"},
                "train": {"learning_rate": 5e-3, "epochs": 2, "batch_size": 8},
                "eval": {"bootstrap_samples": 200, "generation_samples": 2, "limit": 20},
                "mlflow": {"experiment": EXPERIMENT},
                # One webhook-triggered annotation must not retrain (below the threshold).
                "orchestration": {"min_changed_rows": 3, "checkpoint_every_steps": 2},
            }
        )
    )
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        "PREFECT_LOGGING_LEVEL": "INFO",
        # SQLite under a busy 2-core machine: wait for the write lock rather than fail a heartbeat.
        "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
        "PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT": "30",
        "LORA_PIPELINE_HOME": str(ROOT),
        "LORA_PIPELINE_WORK_DIR": str(root / "work"),
        "LORA_PIPELINE_CONFIG": str(config),
        "LORA_PIPELINE_BASE_MODEL": str(tiny_model_dir),
        "LORA_PIPELINE_WEBHOOK_SECRET": SECRET,
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "MLFLOW_TRACKING_URI": mlflow_server,
        "OMP_NUM_THREADS": "1",
        # The deployments run `python -m flows.warm_start`: the worker's python is this venv's, as when activated.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    procs = [
        spawn_server(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
            env,
            logs / "server.log",
            ROOT,
        )
    ]
    try:
        _wait("the Prefect server", lambda: _healthy(f"{api_url}/health"), 180)
        deployed = subprocess.run(
            [str(BIN / "lora-pipeline"), "deploy", "--gpu-slots", "1"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert "work pool gpu: created, concurrency limit 1" in deployed.stdout
        for pool in ("cpu", "gpu"):
            # As shipped: Prefect's process worker with its warm process (flow runs forked, flows/warm_worker.py).
            cmd = [str(BIN / "lora-pipeline"), "worker", "--pool", pool, "--name", f"worker-{pool}", "--limit", "1"]
            procs.append(spawn_server(cmd, env, logs / f"worker-{pool}.log", ROOT))
        yield Stack(api_url, env, root / "work", config, mlflow_server, label_studio, logs)
    finally:
        # Each worker's own processes (Prefect's worker, the warm process) must end with it: nothing leaks.
        helpers = [kid for proc in procs[1:] for kid in _children(proc.pid)]
        for proc in reversed(procs):
            stop_server(proc)
        _wait("the workers' processes (Prefect's worker, the warm process) to end", lambda: not _living(helpers), 60)


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _living(procs: list[psutil.Process]) -> list[psutil.Process]:
    living = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                living.append(proc)
        except psutil.NoSuchProcess:
            pass
    return living


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _experiment_runs(uri: str) -> list[Any]:
    ml = MlflowClient(uri)
    exp = ml.get_experiment_by_name(EXPERIMENT)
    return ml.search_runs([exp.experiment_id]) if exp else []


def _versions(uri: str) -> int:
    return len(MlflowClient(uri).search_model_versions("name='lora-adapter'"))


def test_ingest_on_cpu_trains_on_gpu_then_skips_an_unchanged_pull(stack: Stack) -> None:
    """The nightly deployment runs on pool cpu and hands a snapshot reference to lora-train/gpu, which runs
    on pool gpu; the next run, with no new annotations, ends Completed without training or registering."""
    client = connect(stack.label_studio.url, stack.label_studio.token)
    assert seed_project(client, PROJECT, ("schedules", "tickets", "lost_property", "accessibility"), n=80).imported

    ingest = stack.run("lora-ingest/nightly")
    assert ingest.state is not None and ingest.state.is_completed(), stack.log_tail()
    assert ingest.work_pool_name == "cpu"
    trains = stack.flow_runs("lora-train/gpu")
    assert len(trains) == 1
    train = trains[0]
    assert train.work_pool_name == "gpu" and train.state is not None and train.state.is_completed()
    # Only a reference crossed: the snapshot's path and hash, and the config as data.
    assert set(train.parameters) >= {"snapshot_dir", "snapshot_hash", "config", "base_model_fingerprint"}
    snapshot = load_snapshot(train.parameters["snapshot_dir"])
    assert snapshot.hash == train.parameters["snapshot_hash"]
    assert Path(train.parameters["snapshot_dir"]).is_relative_to(stack.work_dir / "snapshots")

    runs = _experiment_runs(stack.mlflow_uri)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["dataset_hash"] == snapshot.hash
    assert runs[0].data.tags["prefect_flow_run_id"] == str(train.id)
    versions = _versions(stack.mlflow_uri)

    again = stack.run("lora-ingest/nightly")
    assert again.state is not None and again.state.is_completed(), stack.log_tail()
    assert again.state.message.startswith(f"no new annotations since snapshot {snapshot.hash[:12]}")
    assert len(stack.flow_runs("lora-train/gpu")) == 1
    assert len(_experiment_runs(stack.mlflow_uri)) == 1
    assert _versions(stack.mlflow_uri) == versions


def test_an_annotation_fires_a_webhook_that_triggers_the_ingest_deployment(stack: Stack) -> None:
    """Label Studio -> webhook -> receiver (debounced) -> Prefect event -> deployment trigger -> ingest run.
    One new annotation is below orchestration.min_changed_rows (3), so the triggered run does not train."""
    client = connect(stack.label_studio.url, stack.label_studio.token)
    project = next(p for p in client.projects.list() if p.title == PROJECT)
    port = free_port()
    receiver = spawn_server(
        [str(BIN / "lora-pipeline"), "webhook-receiver", "--port", str(port), "--quiet-s", "1", "--max-wait-s", "5"],
        stack.env,
        stack.logs / "receiver.log",
        ROOT,
    )
    try:
        _wait("the webhook receiver", lambda: _healthy(f"http://127.0.0.1:{port}/health"), 60)
        hook = subprocess.run(
            [str(BIN / "lora-pipeline"), "labelstudio", "webhook", "--url", f"http://127.0.0.1:{port}/label-studio"],
            env=stack.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert hook.returncode == 0, hook.stderr
        before = len(stack.flow_runs("lora-ingest/nightly"))
        open_task = next(t for t in iter_tasks(client, project.id) if not t.get("total_annotations"))
        submit_annotation(client, int(open_task["id"]), "Platform 4, every ten minutes.", "schedules")

        triggered = _wait(
            "a triggered ingest run",
            lambda: stack.flow_runs("lora-ingest/nightly")[before:],
            240,
        )[0]
        final = _wait("the triggered run to finish", lambda: _finished(stack.read(triggered.id)), 300)
        assert final.state.is_completed(), stack.log_tail()
        assert "1 accepted row(s) changed" in final.state.message
        assert "waiting for orchestration.min_changed_rows=3" in final.state.message
        assert len(stack.flow_runs("lora-train/gpu")) == 1
    finally:
        stop_server(receiver)
    assert "emitted" in (stack.logs / "receiver.log").read_text().lower()


def _finished(run: FlowRun) -> FlowRun | None:
    return run if run.state is not None and run.state.is_final() else None


def test_sigkill_during_training_then_rerun_resumes_to_the_same_adapter(stack: Stack, tiny_model_dir: Path) -> None:
    """SIGKILL of the gpu worker's flow process mid-training; a rerun of the same reference resumes from the
    newest checkpoint (first step after resume > 0), logs to the same MLflow run and ends with the adapter an
    uninterrupted run gives (fp32 CPU, within 1e-6)."""
    first = stack.flow_runs("lora-train/gpu")[0]
    config = dict(first.parameters["config"])
    # Different work (seed, more steps) so that the kill lands mid-training.
    config["train"] = {**config["train"], "seed": 1, "epochs": 8, "batch_size": 2, "checkpoint_every_steps": 4}
    params = {**first.parameters, "config": config}
    cfg = PipelineConfig.model_validate(config)
    key = work_key(params["snapshot_hash"], cfg)
    work = stack.work_dir / "adapters" / key

    killed = stack.run("lora-train/gpu", params, timeout=0)
    _wait("a checkpoint", lambda: len(list_checkpoints(checkpoint_root(work / "adapter"))) >= 1, 300, 0.1)
    pid = lock_holder(work)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    crashed = _wait("the killed run to be marked final", lambda: _finished(stack.read(killed.id)), 120)
    assert not crashed.state.is_completed()
    assert not (work / "adapter" / "adapter_model.safetensors").exists()

    resumed = stack.run("lora-train/gpu", params)
    assert resumed.state is not None and resumed.state.is_completed(), stack.log_tail()
    runs = [r for r in _experiment_runs(stack.mlflow_uri) if r.data.tags.get("work_key") == key]
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["attempts"] == "2"
    assert run.data.metrics["train/resumed_from_step"] > 0

    snapshot = load_snapshot(params["snapshot_dir"])
    train_df, eval_df = snapshot.split()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (OMP_NUM_THREADS=1): the same reduction order
    try:
        reference = train_adapter(
            cfg.model_copy(update={"base_model": str(tiny_model_dir)}),
            train_df,
            eval_df,
            stack.work_dir.parent / "uninterrupted",
            dataset_hash=snapshot.hash,
        )
    finally:
        torch.set_num_threads(threads)
    got = load_file(work / "adapter" / "adapter_model.safetensors")
    want = load_file(reference.adapter_dir / "adapter_model.safetensors")
    assert got.keys() == want.keys()
    assert max(float((got[k].float() - want[k].float()).abs().max()) for k in got) <= 1e-6
    assert reference.steps == int(run.data.metrics["train/steps"])
