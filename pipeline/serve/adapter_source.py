"""Where an adapter comes from: a local directory or an MLflow registry URI, resolved to local files, the base
model it was trained on and that base's fingerprint (what `check_manifest_matches` compares)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.track.store import tracking_client
from pipeline.train.manifest import MANIFEST

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class AdapterSource:
    """A resolved adapter: its PEFT files on disk, the base it needs and where it came from."""

    adapter_dir: Path
    # As recorded: a hub id, `model-store:DIR` or a path; `pipeline.base_model.resolve_base` gives what loads.
    base_model: str
    base_fingerprint: dict[str, Any]
    description: str


def resolve_adapter(ref: str, *, tracking_uri: str | None = None, dest: str | Path | None = None) -> AdapterSource:
    """`ref` is an adapter directory written by the recipe, or `models:/NAME@ALIAS` / `models:/NAME/VERSION`."""
    if ref.startswith("models:/"):
        return _from_registry(ref, tracking_uri, dest)
    return _from_dir(Path(ref))


def _from_dir(path: Path) -> AdapterSource:
    if not path.is_dir():
        raise FileNotFoundError(f"adapter {path} does not exist (pass a directory or models:/NAME@ALIAS)")
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise ValueError(f"{path} has no {MANIFEST}: only adapters written by the training recipe can be loaded")
    base = json.loads(manifest.read_text())["base_model"]
    return AdapterSource(path, str(base["model_id"]), dict(base), f"adapter {path}")


def _from_registry(ref: str, tracking_uri: str | None, dest: str | Path | None) -> AdapterSource:
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.track.registry import TAG_BASE_MODEL

    m = _MODELS_URI.match(ref)
    if m is None:
        raise ValueError(f"{ref!r} is not a registry URI; use models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, version = m["name"], m["alias"], m["version"]
    client = tracking_client(tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as e:
        what = f"alias {alias!r}" if alias else f"version {version}"
        raise ValueError(f"registered model {name!r} has no {what} at {client.tracking_uri} ({e.error_code})") from None
    if dest is None:
        raise ValueError("a registry adapter needs a download directory")
    mlflow.set_tracking_uri(client.tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{mv.version}", dst_path=str(dest)))
    adapter_dir = local / "peft"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(
            f"{ref} (version {mv.version}) holds no PEFT adapter under peft/; it is not a pipeline adapter"
        )
    meta = (yaml.safe_load((local / "MLmodel").read_text()) or {}).get("metadata") or {}
    base_model = str(meta.get("base_model") or mv.tags.get(TAG_BASE_MODEL) or "")
    if not base_model:
        raise ValueError(f"{ref} (version {mv.version}) does not record its base model")
    return AdapterSource(
        adapter_dir, base_model, dict(meta.get("base_fingerprint") or {}), f"{name} version {mv.version} ({ref})"
    )
