"""The MLflow model registry: register a gated adapter (adapter only, referencing its base) under an alias,
and fetch the current champion for the gate's comparison.

`mlflow.transformers.log_model` with a PEFT model writes only the adapter (`peft/`) and the tokenizer;
`base_model_path` records a local base by path instead of copying its weights (API_NOTES.md §4).
`pip_requirements` is explicit because MLflow's inferred defaults pin torchvision, which is not installed.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from pipeline.track.store import ensure_store, tracking_client

CANDIDATE = "candidate"
CHAMPION = "champion"
MODEL_ARTIFACT = "registered_adapter"
# Tags on every registered version: what the adapter was trained on and how it scored.
TAG_BASE_MODEL = "base_model"
TAG_BASE_WEIGHTS = "base_weights_hash"
TAG_TASK_LOSS = "task_loss_adapter"
# The champion version the gate compared this version with ("none": there was none).
TAG_COMPARED_TO = "compared_to_champion"


def previous_tag(alias: str) -> str:
    """The version tag naming the version that held `alias` before this one did ("none": no version did)."""
    return f"previous_{alias}"


@dataclass(frozen=True)
class Champion:
    """The version behind the `champion` alias and where its adapter files were downloaded."""

    version: ModelVersion
    adapter_dir: Path

    @property
    def base_weights_hash(self) -> str | None:
        return self.version.tags.get(TAG_BASE_WEIGHTS)


def _requirements() -> list[str]:
    """Pinned to what is installed here: a loader elsewhere needs the same torch/transformers/peft."""
    reqs = []
    for pkg in ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers"):
        try:
            version = importlib.metadata.version(pkg).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            continue
        reqs.append(f"{pkg}=={version}")
    return reqs


def register_adapter(
    tracking_uri: str,
    run_id: str,
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    name: str,
    alias: str,
    base_model: str,
    manifest: dict[str, Any],
    tags: dict[str, str] | None = None,
) -> ModelVersion:
    """Log the adapter (not the base) as an MLflow transformers model in `run_id`, register it, set `alias`."""
    ensure_store(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    local_base = Path(base_model)
    base_fp = manifest.get("base_model") or {}
    mlflow.start_run(run_id=run_id)
    try:
        info = mlflow.transformers.log_model(
            {"model": model, "tokenizer": tokenizer},
            name=MODEL_ARTIFACT,
            task="text-generation",
            # A local base is referenced by absolute path; a hub id is referenced by repo id automatically.
            base_model_path=str(local_base.resolve()) if local_base.is_dir() else None,
            pip_requirements=_requirements(),
            metadata={"base_model": base_model, "base_fingerprint": base_fp},
        )
    finally:
        # Not FINISHED: leaving `with mlflow.start_run()` would mark the run done before its flow is
        # (a kill after registration must not leave a run that claims to have finished).
        mlflow.end_run(status="RUNNING")
    client = tracking_client(tracking_uri)
    all_tags = {
        TAG_BASE_MODEL: base_model,
        TAG_BASE_WEIGHTS: str(base_fp.get("weights_hash", "")),
        "dataset_hash": str(manifest.get("dataset_hash", "")),
        **(tags or {}),
    }
    before = get_alias(tracking_uri, name, alias)
    # Which version held the alias before this one: `lora-pipeline rollback` moves the alias back there.
    all_tags[previous_tag(alias)] = "none" if before is None else str(before.version)
    mv = mlflow.register_model(info.model_uri, name, tags=all_tags)
    client.set_registered_model_alias(name, alias, mv.version)
    return client.get_model_version(name, mv.version)


def get_alias(tracking_uri: str, name: str, alias: str) -> ModelVersion | None:
    """The version behind `name@alias`, or None when the model or the alias does not exist yet."""
    client = tracking_client(tracking_uri)
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        # RESOURCE_DOES_NOT_EXIST: no such registered model or alias — the first adapter has no champion.
        if e.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(e).lower():
            return None
        raise


def fetch_champion(tracking_uri: str, name: str, dest: str | Path) -> Champion | None:
    """Download the champion's adapter files (`peft/`) to `dest`; None when there is no champion."""
    version = get_alias(tracking_uri, name, CHAMPION)
    if version is None:
        return None
    mlflow.set_tracking_uri(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@{CHAMPION}", dst_path=str(dest)))
    adapter_dir = local / "peft"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(
            f"registered model {name}@{CHAMPION} (version {version.version}) holds no PEFT adapter under peft/; "
            "it was not registered by this pipeline — move the champion alias to an adapter version"
        )
    return Champion(version=version, adapter_dir=adapter_dir)
