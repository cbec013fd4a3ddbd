"""MLflow logging for one pipeline run: params, step metrics, eval metrics, artifacts, lineage.

Everything goes through an explicit run id (no global active run), so the Prefect tasks of one
flow can log to the same run. Settings (and so the Label Studio token) are never logged.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Experiment, Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.fluent import _create_dataset_input

from pipeline.config import PipelineConfig
from pipeline.track.metric_names import sectioned
from pipeline.track.store import tracking_client
from pipeline.validate.hf_dataset import HF_DIR, load_hf_dataset
from pipeline.validate.snapshot import Snapshot


def run_params(config: PipelineConfig, dataset_hash: str) -> dict[str, str]:
    """The params reviewers compare runs by, plus the whole config under `cfg.`."""
    lc, t = config.lora, config.train
    targets = lc.peft_target_modules()
    params: dict[str, Any] = {
        "lora_r": lc.r,
        "lora_alpha": lc.alpha,
        "lora_dropout": lc.dropout,
        "target_modules": targets if isinstance(targets, str) else ",".join(targets),
        "learning_rate": t.learning_rate,
        "epochs": t.epochs,
        "batch_size": t.batch_size,
        "grad_accum_steps": t.grad_accum_steps,
        "seed": t.seed,
        "base_model": config.base_model,
        "dataset_hash": dataset_hash,
    }
    params.update({f"cfg.{k}": v for k, v in config.to_flat_dict().items()})
    return {k: str(v) for k, v in params.items()}


def ensure_experiment(client: MlflowClient, tracking_uri: str, name: str) -> Experiment:
    """The experiment, created if missing; with a local sqlite store, artifacts go next to the database
    (MLflow's default would be ./mlruns in whatever directory the process runs in)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found
    location = None
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        location = (db.parent / "mlartifacts").as_uri()
    try:
        return client.get_experiment(client.create_experiment(name, artifact_location=location))
    except MlflowException as e:
        # Another flow created it between our lookup and our create: use theirs.
        created = client.get_experiment_by_name(name)
        if e.error_code != "RESOURCE_ALREADY_EXISTS" or created is None:
            raise
        return created


def start_run(
    tracking_uri: str,
    config: PipelineConfig,
    snapshot: Snapshot,
    *,
    tags: dict[str, str] | None = None,
) -> str:
    """Create the run with params, tags and the snapshot as its training dataset input; returns the run id."""
    mlflow.set_tracking_uri(tracking_uri)
    client = tracking_client(tracking_uri)
    experiment = ensure_experiment(client, tracking_uri, config.mlflow.experiment)
    source = snapshot.meta.get("source", {})
    all_tags = {
        "dataset_hash": snapshot.hash,
        "snapshot_path": str(snapshot.path),
        "label_studio_project": str(source.get("project_id", "")),
        **(tags or {}),
    }
    run = client.create_run(
        experiment.experiment_id, tags=all_tags, run_name=f"lora-r{config.lora.r}-{snapshot.hash[:8]}"
    )
    run_id = run.info.run_id
    client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in run_params(config, snapshot.hash).items()])
    # Through the client, not `with mlflow.start_run(...)`: leaving that block would mark the run FINISHED, and
    # a run that crashes later must stay unfinished (change detection and resume rely on the status).
    client.log_inputs(
        run_id,
        datasets=[_create_dataset_input(dataset, context, None) for dataset, context in snapshot_inputs(snapshot)],
    )
    log_agreement(tracking_uri, run_id, snapshot)
    return run_id


def log_agreement(tracking_uri: str, run_id: str, snapshot: Snapshot) -> None:
    """The snapshot's inter-annotator agreement (pipeline/validate/agreement/): metrics under data/agreement/ and
    the per-annotator table as data/agreement/annotators.json; nothing when the project uses no overlap."""
    agreement = snapshot.meta.get("agreement") or {}
    metrics = {k: v for k, v in (agreement.get("metrics") or {}).items() if isinstance(v, int | float)}
    if metrics:
        log_metrics(tracking_uri, run_id, metrics)
    table = snapshot.path / str(agreement.get("files", "agreement")) / "annotators.json"
    if agreement.get("applicable") and table.is_file():
        log_table(tracking_uri, run_id, json.loads(table.read_text()), "data/agreement/annotators.json")


def snapshot_inputs(snapshot: Snapshot) -> list[tuple[Any, str]]:
    """The run's dataset inputs: the snapshot's train and eval splits as Hugging Face datasets, digest = the
    snapshot hash, so the run page lists both and links them to the same snapshot."""
    hf_dir = snapshot.path / HF_DIR
    if not hf_dir.is_dir():  # a snapshot written before snapshots carried hf/: the parquet rows
        frame = mlflow.data.from_pandas(
            snapshot.records,
            source=str(snapshot.parquet_path),
            name=f"snapshot-{snapshot.hash[:12]}",
            digest=snapshot.hash[:36],
        )
        return [(frame, "training")]
    ds = load_hf_dataset(snapshot.path)
    return [
        (
            mlflow.data.from_huggingface(
                ds[split], source=str(hf_dir), name=f"snapshot-{snapshot.hash[:12]}-{split}", digest=snapshot.hash[:36]
            ),
            context,
        )
        for split, context in (("train", "training"), ("eval", "evaluation"))
    ]


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float]) -> None:
    """Log final metrics under their sectioned MLflow names (pipeline/track/metric_names.py); non-finite values
    are skipped: MLflow stores them poorly."""
    now = int(time.time() * 1000)
    tracking_client(tracking_uri).log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in sectioned(metrics).items() if math.isfinite(float(v))],
    )


def log_artifacts(tracking_uri: str, run_id: str, local_dir: str | Path, artifact_path: str) -> None:
    """Upload a directory's files under `artifact_path`."""
    tracking_client(tracking_uri).log_artifacts(run_id, str(local_dir), artifact_path)


def log_artifact(tracking_uri: str, run_id: str, local_file: str | Path, artifact_path: str | None = None) -> None:
    """Upload one file."""
    tracking_client(tracking_uri).log_artifact(run_id, str(local_file), artifact_path)


def log_table(tracking_uri: str, run_id: str, rows: list[dict[str, Any]], artifact_file: str) -> None:
    """A table artifact (JSON) that the MLflow UI renders in its artifact view and evaluation tab."""
    columns = list(rows[0]) if rows else []
    tracking_client(tracking_uri).log_table(run_id, {c: [r[c] for r in rows] for c in columns}, artifact_file)


def log_text(tracking_uri: str, run_id: str, text: str, artifact_file: str) -> None:
    """A text artifact (Markdown reports render in the UI's artifact view)."""
    tracking_client(tracking_uri).log_text(run_id, text, artifact_file)


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark the run FINISHED or FAILED."""
    tracking_client(tracking_uri).set_terminated(run_id, status)
