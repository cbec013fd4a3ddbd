"""Resolve the configured base model to a fingerprint without loading it: the check that runs before a pull;
and the portable reference to a base that the registry records (`portable_base`) and every loader resolves back
to something `from_pretrained` opens (`resolve_base`).

A local directory is fingerprinted by its config and weight files (content hashes); a hub id by the
commit its name resolves to (from the hub, or from the local cache when offline). Anything else is a
one-line `BaseModelError`, raised before any annotation is pulled or any GPU is asked for.

Portable references (docs/model_store.md): a hub id stays a hub id (its revision is in the fingerprint); a local
directory inside the model store (`$LORA_PIPELINE_MODEL_STORE`) becomes `model-store:<path relative to the
store>`; any other local directory stays an absolute path, marked not portable.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

_WEIGHT_GLOBS = ("*.safetensors", "*.bin")
# Weight files that only an unpickler reads (transformers' and PEFT's legacy names).
PICKLE_WEIGHT_GLOBS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
# Local weight files up to this size are hashed in full; bigger ones by size + safetensors header.
_FULL_HASH_LIMIT = 2 * 1024**3


class BaseModelError(ValueError):
    """The base model is neither a usable local directory nor resolvable on the Hugging Face hub."""


class UnsafeFormatError(ValueError):
    """Weights that would be unpickled (which can run code) without the config allowing it."""


# The declared model store: a directory of local base models, mounted wherever adapters are trained or loaded.
MODEL_STORE_ENV = "LORA_PIPELINE_MODEL_STORE"
STORE_PREFIX = "model-store:"


@dataclass(frozen=True)
class BaseRef:
    """How a registry version names its base: `ref` is recorded; `portable` says whether it opens on another machine."""

    ref: str
    portable: bool


def model_store() -> Path | None:
    """The declared model store (`$LORA_PIPELINE_MODEL_STORE`), or None when none is declared."""
    value = os.environ.get(MODEL_STORE_ENV, "").strip()
    return Path(value).expanduser() if value else None


def portable_base(base_model: str, store: Path | None = None) -> BaseRef:
    """The reference to record for `base_model`: a hub id or `model-store:` reference as is, a local directory
    inside the model store (`store`, default `$LORA_PIPELINE_MODEL_STORE`) as `model-store:<relative path>`, any
    other local directory as its absolute path with `portable=False`."""
    if base_model.startswith(STORE_PREFIX):
        return BaseRef(base_model, True)
    local = Path(base_model).expanduser()
    if not local.is_dir():
        return BaseRef(base_model, True)  # a hub id (fingerprint_base refuses anything else before training)
    store = store if store is not None else model_store()
    if store is not None:
        # As spelled and with symlinks resolved: a store entry may link to a disk elsewhere, or the store itself.
        for path, root in (
            (Path(os.path.abspath(local)), Path(os.path.abspath(store))),
            (local.resolve(), store.resolve()),
        ):
            if path != root and path.is_relative_to(root):
                return BaseRef(STORE_PREFIX + path.relative_to(root).as_posix(), True)
    return BaseRef(str(local.resolve()), False)


def resolve_base(ref: str, store: Path | None = None) -> str:
    """What `from_pretrained` opens for a recorded base reference: `model-store:REL` becomes the directory REL in
    the model store (`store`, default `$LORA_PIPELINE_MODEL_STORE`); a hub id or a path is returned unchanged.
    The caller still checks the loaded base against the adapter's fingerprint (a different model at the same
    relative path is refused there)."""
    if not ref.startswith(STORE_PREFIX):
        local = Path(ref)
        if local.is_absolute() and not local.is_dir():
            raise BaseModelError(
                f"base model {ref} is a machine path (recorded outside any model store, not portable) that does not "
                f"exist here; copy the model to that path, or keep base models under ${MODEL_STORE_ENV} so that "
                "adapters record them portably"
            )
        return ref
    rel = PurePosixPath(ref.removeprefix(STORE_PREFIX))
    if not rel.parts or rel.is_absolute() or ".." in rel.parts:
        raise BaseModelError(f"base model {ref!r} is not a path inside the model store (model-store:DIR/...)")
    store = store if store is not None else model_store()
    if store is None:
        raise BaseModelError(
            f"base model {ref} is relative to the model store, but {MODEL_STORE_ENV} is not set; "
            "set it to the directory that holds the base models"
        )
    path = store.joinpath(*rel.parts)
    if not (path / "config.json").is_file():
        raise BaseModelError(
            f"base model {ref} is not in the model store {MODEL_STORE_ENV}={store} (no model directory {path}); "
            f"point {MODEL_STORE_ENV} at the store that holds it"
        )
    return str(path)


def check_weights_format(base_model: str, *, allow_pickle_weights: bool) -> None:
    """Refuse a local model directory whose weights exist only as pickles, unless `model.allow_pickle_weights`."""
    local = Path(base_model).expanduser()
    if not local.is_dir() or allow_pickle_weights or any(local.glob("*.safetensors")):
        return
    pickles = sorted(p.name for g in PICKLE_WEIGHT_GLOBS for p in local.glob(g))
    if pickles:
        raise UnsafeFormatError(
            f"base model directory {local} holds only pickle weights ({', '.join(pickles[:3])}), which can run "
            "code when loaded; convert them to safetensors, or set model.allow_pickle_weights: true if you trust them"
        )


def base_model_fingerprint(base_model: str, *, allow_pickle_weights: bool = False) -> str:
    """`local:<sha256-16>` of a local model directory or `hub:<id>@<commit>` of a hub model; a local directory
    with only pickle weights is refused here already (before any pull) unless `allow_pickle_weights`."""
    local = Path(base_model).expanduser()
    if local.is_dir():
        check_weights_format(base_model, allow_pickle_weights=allow_pickle_weights)
        return f"local:{_hash_local(local)}"
    if local.exists() or base_model.startswith((".", "/", "~")) or base_model.count("/") > 1:
        raise BaseModelError(f"base model {base_model!r} is not a model directory (no such directory)")
    return f"hub:{base_model}@{_hub_revision(base_model)}"


def local_weights_hash(path: Path) -> str:
    """sha256 over a model directory's weight files and config.json (the value adapter manifests record as
    `base_model.weights_hash`); files above 2 GiB count by name, size and first MiB, so that a 70B checkpoint
    does not cost minutes of hashing per run."""
    h = hashlib.sha256()
    for p in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) + [path / "config.json"]:
        if p.is_file():
            _hash_file(h, p)
    return h.hexdigest()


def _hash_file(h: hashlib._Hash, path: Path) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with path.open("rb") as f:
        if size <= _FULL_HASH_LIMIT:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(f.read(1 << 20))  # safetensors header and first tensors


def _hash_local(path: Path) -> str:
    if not (path / "config.json").is_file():
        raise BaseModelError(f"base model directory {path} has no config.json (is it a saved model?)")
    if not any(p.is_file() for g in _WEIGHT_GLOBS for p in path.glob(g)):
        raise BaseModelError(f"base model directory {path} has no weight files (*.safetensors or *.bin)")
    return local_weights_hash(path)[:16]


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
