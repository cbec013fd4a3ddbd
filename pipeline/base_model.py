"""Resolve the configured base model to a fingerprint without loading it: the check that runs before a pull.

A local directory is fingerprinted by its config and weight files (content hashes); a hub id by the
commit its name resolves to (from the hub, or from the local cache when offline). Anything else is a
one-line `BaseModelError`, raised before any annotation is pulled or any GPU is asked for.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_WEIGHT_GLOBS = ("*.safetensors", "*.bin")


class BaseModelError(ValueError):
    """The base model is neither a usable local directory nor resolvable on the Hugging Face hub."""


def base_model_fingerprint(base_model: str) -> str:
    """`local:<sha256-16>` of a local model directory or `hub:<id>@<commit>` of a hub model."""
    local = Path(base_model).expanduser()
    if local.is_dir():
        return f"local:{_hash_local(local)}"
    if local.exists() or base_model.startswith((".", "/", "~")) or base_model.count("/") > 1:
        raise BaseModelError(f"base model {base_model!r} is not a model directory (no such directory)")
    return f"hub:{base_model}@{_hub_revision(base_model)}"


def _hash_local(path: Path) -> str:
    config = path / "config.json"
    if not config.is_file():
        raise BaseModelError(f"base model directory {path} has no config.json (is it a saved model?)")
    weights = sorted(p for g in _WEIGHT_GLOBS for p in path.glob(g) if p.is_file())
    if not weights:
        raise BaseModelError(f"base model directory {path} has no weight files (*.safetensors or *.bin)")
    h = hashlib.sha256()
    for p in [config, *weights]:
        h.update(p.name.encode())
        with p.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


def _hub_revision(repo_id: str) -> str:
    from huggingface_hub import HfApi, constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE:
        cached = try_to_load_from_cache(repo_id, "config.json")
        if isinstance(cached, str):
            # <cache>/models--org--name/snapshots/<commit>/config.json
            return Path(cached).parent.name
        raise BaseModelError(
            f"base model {repo_id!r} is not a local directory and not in the Hugging Face cache, and "
            "HF_HUB_OFFLINE=1 forbids downloading it; download it once online or point base_model at a directory"
        )
    try:
        info = HfApi().model_info(repo_id)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BaseModelError(f"base model {repo_id!r} could not be resolved on the Hugging Face hub: {reason}") from exc
    if not info.sha:
        raise BaseModelError(f"base model {repo_id!r}: the hub returned no revision")
    return info.sha
