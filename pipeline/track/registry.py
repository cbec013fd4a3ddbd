"""The MLflow model registry: register a gated adapter (adapter only, referencing its base) under an alias,
and fetch the current champion for the gate's comparison.

`mlflow.transformers.log_model` with a PEFT model writes only the adapter (`peft/`) and the tokenizer;
`base_model_path` records a local base by path instead of copying its weights (API_NOTES.md §4).
`pip_requirements` is explicit because MLflow's inferred defaults pin torchvision, which is not installed.

The base is recorded by its portable reference (pipeline/base_model.py, docs/model_store.md): MLflow and PEFT
write a local base's absolute path into MLmodel, peft/adapter_config.json and peft/README.md, so those files
are rewritten to the reference before they are uploaded (`_PortableTransformers`).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from pipeline.base_model import MODEL_STORE_ENV, BaseRef, portable_base
from pipeline.track.store import ensure_store, tracking_client

CANDIDATE = "candidate"
CHAMPION = "champion"
MODEL_ARTIFACT = "registered_adapter"
# Tags on every registered version: what the adapter was trained on and how it scored.
TAG_BASE_MODEL = "base_model"
TAG_BASE_WEIGHTS = "base_weights_hash"
# "false": the base is a machine path outside the model store; the version loads only where that path exists.
TAG_BASE_PORTABLE = "base_model_portable"
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


class _PortableTransformers:
    """`mlflow.transformers` as a `Model.log` flavor that records the base as `base.ref` instead of the local
    directory `local` it was loaded from (MLmodel's `local_base_model_path` / `source_model_name`, PEFT's
    `base_model_name_or_path` and model card); loaders pass `base_model_path=resolve_base(ref)`."""

    __name__ = "mlflow.transformers"

    def __init__(self, local: Path, base: BaseRef) -> None:
        self.base = base
        # The absolute spellings of the base directory that MLflow or PEFT may have written (symlinks resolved or not).
        self.spellings = sorted({os.path.abspath(local), str(local.resolve())}, key=len, reverse=True)

    def save_model(self, path: str, mlflow_model: Model, **kwargs: Any) -> None:
        mlflow.transformers.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
        root = Path(path)
        flavor = mlflow_model.flavors["transformers"]
        for key in ("local_base_model_path", "source_model_name"):
            if key in flavor:
                flavor[key] = self.base.ref
        mlflow_model.save(str(root / "MLmodel"))
        peft_config = root / "peft" / "adapter_config.json"
        config = json.loads(peft_config.read_text())
        # As the base was loaded: config.base_model's spelling, which may be relative.
        names = sorted({str(config.get("base_model_name_or_path") or ""), *self.spellings} - {""}, key=len)[::-1]
        config["base_model_name_or_path"] = self.base.ref
        peft_config.write_text(json.dumps(config, indent=2, sort_keys=True))
        card = root / "peft" / "README.md"
        if card.is_file():  # PEFT's model card names the base in its front matter
            text = card.read_text()
            for name in names:
                text = text.replace(f"base_model: {name}\n", f"base_model: {self.base.ref}\n")
                text = text.replace(f"base_model:adapter:{name}\n", f"base_model:adapter:{self.base.ref}\n")
            card.write_text(text)
        left = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and self._names_local(p)]
        assert not left, f"the local base path is still written in {left}"

    def _names_local(self, path: Path) -> bool:
        if path.suffix == ".safetensors":
            return False
        data = path.read_bytes()
        return any(s.encode() in data for s in self.spellings)


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
    """Log the adapter (not the base) as an MLflow transformers model in `run_id`, register it, set `alias`.

    The base is recorded by its portable reference (`portable_base`); a local base outside the model store is
    recorded by its absolute path, tagged `base_model_portable=false`, with a warning."""
    ensure_store(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    local_base = Path(base_model).expanduser()
    base = portable_base(base_model)
    if not base.portable:
        warnings.warn(
            f"base model {base.ref} is outside the model store, so registered model {name} records a machine path "
            f"that opens only here; put the base under ${MODEL_STORE_ENV} to register a portable reference",
            stacklevel=2,
        )
    base_fp = {**(manifest.get("base_model") or {}), "model_id": base.ref}
    mlflow.start_run(run_id=run_id)
    try:
        info = Model.log(
            artifact_path=None,  # MLflow 3 names the model by `name`
            name=MODEL_ARTIFACT,
            # Rewritten only where the reference differs from what MLflow writes: a local base in the model store.
            flavor=_PortableTransformers(local_base, base)
            if base.portable and local_base.is_dir()
            else mlflow.transformers,
            flavor_name="transformers",
            transformers_model={"model": model, "tokenizer": tokenizer},
            task="text-generation",
            # A local base is referenced by path (rewritten to its reference); a hub id by repo id automatically.
            base_model_path=str(local_base.resolve()) if local_base.is_dir() else None,
            pip_requirements=_requirements(),
            metadata={"base_model": base.ref, "base_model_portable": base.portable, "base_fingerprint": base_fp},
        )
    finally:
        # Not FINISHED: leaving `with mlflow.start_run()` would mark the run done before its flow is
        # (a kill after registration must not leave a run that claims to have finished).
        mlflow.end_run(status="RUNNING")
    client = tracking_client(tracking_uri)
    all_tags = {
        TAG_BASE_MODEL: base.ref,
        TAG_BASE_PORTABLE: str(base.portable).lower(),
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
