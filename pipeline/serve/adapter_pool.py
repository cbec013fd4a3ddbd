"""Which adapters the server holds: model names → registry versions, lazy loads, checks, leases and LRU eviction.

A request names `base`, `NAME@ALIAS` or `NAME/VERSION`. Aliases are resolved against the MLflow registry on
first use and then re-read every `poll_s` seconds by a poller thread; when an alias moves, the new version is
downloaded, checked and loaded first, then the alias points at it, so new requests get it with no restart.
A request holds a lease on its version until its last token, so an alias move never touches an in-flight
answer, and eviction (least recently used, beyond `max_adapters`) only ever frees versions nobody holds.
Every version is checked against the served base (weights, tokenizer and chat-template hashes of its
manifest) before it serves; a refused version stays refused, with its reason, for the server's life.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.serve.adapter_source import AdapterSource, resolve_adapter
from pipeline.serve.multi_lora import BASE
from pipeline.track.store import tracking_client

log = logging.getLogger(__name__)

BASE_MODEL_ID = "base"
_MODEL = re.compile(r"^(?:models:/)?(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")
# The manifest fields that must equal the served base's (as `check_manifest_matches` compares them).
FINGERPRINT_KEYS = ("weights_hash", "tokenizer_hash", "chat_template_hash")


class UnknownModel(ValueError):
    """The request's `model` names nothing this server can serve (HTTP 404)."""


class RegistryUnavailable(RuntimeError):
    """The registry could not be asked (HTTP 503); what is loaded keeps serving."""


class AdapterRefused(ValueError):
    """The adapter exists but may not serve on this base (HTTP 409)."""


@dataclass
class Loaded:
    """An adapter version in the engine: its name there (`peft_name`: the PEFT adapter name, or vLLM's lora name
    NAME/VERSION), how many requests hold it, when it was last used."""

    name: str
    version: int
    peft_name: str
    adapter_dir: Path
    download_dir: Path
    size_bytes: int
    refs: int = 0
    last_used: float = 0.0

    @property
    def model_id(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass
class Lease:
    """What one request runs on: the PEFT adapter name (BASE for the base) and the model id it resolved to."""

    adapter: str
    model_id: str
    _pool: AdapterPool | None = None
    _key: tuple[str, int] | None = None

    def release(self) -> None:
        if self._pool is not None and self._key is not None:
            self._pool._release(self._key)
            self._pool = None


def peft_name(name: str, version: int) -> str:
    """A PEFT adapter name (a module-attribute name: no dots, slashes or @) for a registry version."""
    return re.sub(r"\W", "_", f"{name}_v{version}")


# What each engine cannot run, by adapter_config.json flag. The torch engine runs DoRA adapters, but in
# batches of their own (PEFT's mixed-adapter path does not implement DoRA).
UNSUPPORTED: dict[str, dict[str, str]] = {
    "torch": {},
    "vllm": {"use_dora": "vLLM's LoRA kernels do not implement DoRA"},
}


def engine_limits(adapter_dir: str | Path) -> dict[str, str]:
    """Engines that cannot serve the adapter in `adapter_dir`, each with the reason (empty: all can)."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return {engine: why for engine, flags in UNSUPPORTED.items() for flag, why in flags.items() if config.get(flag)}


def check_servable(
    adapter_dir: Path, fingerprint: dict[str, Any], served: dict[str, Any], what: str, engine: str = "torch"
) -> None:
    """Raise AdapterRefused unless the adapter was trained on the served base, tokenizer and chat template and
    is a LoRA that `engine` can run."""
    for key in FINGERPRINT_KEYS:
        if fingerprint.get(key) != served.get(key):
            raise AdapterRefused(
                f"{what}: adapter manifest {key} does not match base model {served.get('model_id')!r} "
                f"(trained on {fingerprint.get('model_id')!r}); serve it with the base it was trained on"
            )
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterRefused(f"{what}: a {config.get('peft_type')} adapter; this server serves LoRA adapters only")
    limits = engine_limits(adapter_dir)
    if engine in limits:
        raise AdapterRefused(f"{what}: cannot be served by --engine {engine}: {limits[engine]}")


class AdapterEngine(Protocol):
    """What the pool drives: the torch `BatchEngine`, or `VllmEngine` (vLLM's runtime LoRA API)."""

    def add_adapter(self, name: str, adapter_dir: Path) -> None: ...

    def delete_adapter(self, name: str) -> None: ...


class AdapterPool:
    """Resolves request model names to loaded adapter versions, following registry aliases.

    With `engine_kind="vllm"` adapters are named `NAME/VERSION` in the engine (vLLM's lora names), are checked
    for what vLLM can run, and a version an alias moved away from is unloaded as soon as no request holds it.
    """

    def __init__(
        self,
        engine: AdapterEngine,
        served_fingerprint: dict[str, Any],
        *,
        tracking_uri: str | None,
        work_dir: Path,
        max_adapters: int = 8,
        poll_s: float = 5.0,
        engine_kind: Literal["torch", "vllm"] = "torch",
    ) -> None:
        if max_adapters < 1:
            raise ValueError(f"--max-adapters={max_adapters}: keep at least one adapter loaded")
        self.engine = engine
        self.engine_kind = engine_kind
        self.replaced: set[tuple[str, int]] = set()  # vllm: versions an alias left, unloaded once idle
        self.served = served_fingerprint
        self.tracking_uri = tracking_uri
        self.work_dir = work_dir
        self.max_adapters = max_adapters
        self.poll_s = poll_s
        self.aliases: dict[tuple[str, str], int] = {}  # (name, alias) -> version it serves now
        self.loaded: dict[tuple[str, int], Loaded] = {}
        self.refused: dict[tuple[str, int], str] = {}
        # alias moves, loads, refusals and evictions, newest last (GET /v1/events); the last 1000 are kept
        self.events: deque[dict[str, Any]] = deque(maxlen=1000)
        self._lock = threading.Lock()  # guards aliases, loaded, refs
        self._load_lock = threading.Lock()  # one download + load at a time
        self._stop = threading.Event()
        self._client: MlflowClient | None = None
        self._poller = threading.Thread(target=self._poll_loop, name="alias-poller", daemon=True)
        if poll_s > 0:
            self._poller.start()

    def close(self) -> None:
        self._stop.set()

    # resolving ----------------------------------------------------------------------------------------------

    def acquire(self, model: str) -> Lease:
        """A lease on what `model` names now (loading it if needed); release it when the answer is done."""
        if model == BASE_MODEL_ID:
            return Lease(BASE, BASE_MODEL_ID)
        key = self._version_for(model)
        loaded = self._ensure_loaded(key, hold=True)
        return Lease(loaded.peft_name, loaded.model_id, self, key)

    def _version_for(self, model: str) -> tuple[str, int]:
        m = _MODEL.match(model)
        if m is None:
            raise UnknownModel(f"model {model!r} is not 'base', 'NAME@ALIAS' or 'NAME/VERSION'")
        name = m["name"]
        if m["version"] is not None:
            key = (name, int(m["version"]))
            if key not in self.loaded and key not in self.refused:
                self._registry_version(name, version=m["version"])
            return key
        alias = m["alias"]
        with self._lock:
            version = self.aliases.get((name, alias))
        if version is None:
            version = self._registry_version(name, alias=alias)
            self._ensure_loaded((name, version), hold=False)
            with self._lock:
                self.aliases.setdefault((name, alias), version)
                version = self.aliases[(name, alias)]
        return (name, version)

    def _registry_version(self, name: str, *, alias: str | None = None, version: str | None = None) -> int:
        if self._client is None:  # one client for the server's life: the poller asks every few seconds
            self._client = tracking_client(self.tracking_uri)
        client = self._client
        try:
            mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
        except MlflowException as e:
            what = f"alias {alias!r}" if alias else f"version {version}"
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                raise UnknownModel(f"registered model {name!r} has no {what} ({e.error_code})") from None
            raise RegistryUnavailable(f"could not look up {name} {what} in the registry: {e}") from e
        except OSError as e:  # connection refused / reset before MLflow's own retries wrap it
            raise RegistryUnavailable(f"could not reach the registry at {self.tracking_uri}: {e}") from e
        return int(mv.version)

    # loading and eviction -----------------------------------------------------------------------------------

    def _ensure_loaded(self, key: tuple[str, int], *, hold: bool) -> Loaded:
        """The loaded version (downloaded, checked and loaded now if needed); `hold` takes a reference on it
        in the same locked step that finds or adds it, so that eviction cannot free it in between."""
        with self._lock:
            self.replaced.discard(key)  # asked for again (by version): it stays, subject to LRU only
            if key in self.loaded:
                return self._touch(self.loaded[key], hold)
        with self._load_lock:
            with self._lock:
                if key in self.loaded:
                    return self._touch(self.loaded[key], hold)
            if key in self.refused:
                raise AdapterRefused(self.refused[key])
            name, version = key
            started = time.monotonic()
            dest = self.work_dir / peft_name(name, version)
            shutil.rmtree(dest, ignore_errors=True)
            try:
                try:
                    source = resolve_adapter(f"models:/{name}/{version}", tracking_uri=self.tracking_uri, dest=dest)
                except ValueError as e:  # no peft/ files, no recorded base: not a pipeline adapter
                    raise AdapterRefused(f"{name}/{version}: {e}") from e
                loaded = self._load(key, source, dest, hold)
            except AdapterRefused as e:
                self.refused[key] = str(e)
                self._event("refused", name, version, reason=str(e))
                shutil.rmtree(dest, ignore_errors=True)
                raise
            self._event("loaded", name, version, seconds=round(time.monotonic() - started, 3))
        self._evict()
        return loaded

    @staticmethod
    def _touch(loaded: Loaded, hold: bool) -> Loaded:
        loaded.refs += int(hold)
        loaded.last_used = time.monotonic()
        return loaded

    def _load(self, key: tuple[str, int], source: AdapterSource, dest: Path, hold: bool) -> Loaded:
        name, version = key
        what = f"{name}/{version}"
        check_servable(source.adapter_dir, source.base_fingerprint, self.served, what, self.engine_kind)
        adapter = what if self.engine_kind == "vllm" else peft_name(name, version)
        try:
            self.engine.add_adapter(adapter, source.adapter_dir)
        except (ValueError, KeyError, RuntimeError) as e:  # PEFT / vLLM: modules or shapes that do not fit
            raise AdapterRefused(f"{what}: does not load onto the served base: {e}") from e
        size = sum(p.stat().st_size for p in source.adapter_dir.glob("*.safetensors"))
        loaded = Loaded(
            name, version, adapter, source.adapter_dir, dest, size, refs=int(hold), last_used=time.monotonic()
        )
        with self._lock:
            self.loaded[key] = loaded
        return loaded

    def _release(self, key: tuple[str, int]) -> None:
        with self._lock:
            self.loaded[key].refs -= 1
        self._evict()

    def _evict(self) -> None:
        """Delete idle versions an alias moved away from (vllm), then least-recently-used idle adapters while more
        than `max_adapters` are loaded."""
        while True:
            with self._lock:
                idle = [a for a in self.loaded.values() if a.refs == 0]
                retired = [a for a in idle if (a.name, a.version) in self.replaced]
                if retired:
                    victim, kind = retired[0], "unloaded"
                    self.replaced.discard((victim.name, victim.version))
                elif len(self.loaded) <= self.max_adapters:
                    return
                elif not idle:
                    return  # all in use: over budget until some finish
                else:
                    victim, kind = min(idle, key=lambda a: a.last_used), "evicted"
                del self.loaded[(victim.name, victim.version)]
            self.engine.delete_adapter(victim.peft_name)
            shutil.rmtree(victim.download_dir, ignore_errors=True)
            self._event(kind, victim.name, victim.version)

    # following aliases --------------------------------------------------------------------------------------

    def refresh_aliases(self) -> None:
        """Re-read every alias in use; load a moved alias's new version before pointing the alias at it."""
        with self._lock:
            followed = dict(self.aliases)
        for (name, alias), current in followed.items():
            try:
                version = self._registry_version(name, alias=alias)
            except UnknownModel:
                continue  # alias deleted: keep serving what it pointed at until it is set again
            except RegistryUnavailable as e:
                log.warning("%s; retrying in %s s", e, self.poll_s)
                return
            if version == current:
                continue
            try:
                self._ensure_loaded((name, version), hold=False)
            except AdapterRefused as e:
                log.error("%s@%s moved to version %d, which is refused: %s", name, alias, version, e)
            with self._lock:
                self.aliases[(name, alias)] = version
                if self.engine_kind == "vllm" and current not in {v for (n, _), v in self.aliases.items() if n == name}:
                    self.replaced.add((name, current))
            self._event("alias", name, version, alias=alias, previous=current)
            log.info("%s@%s now serves version %d (was %d)", name, alias, version, current)
            self._evict()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh_aliases()
            except (MlflowException, OSError, RegistryUnavailable) as e:  # keep serving, retry next period
                log.warning("could not refresh registry aliases: %s", e)

    def _event(self, kind: str, name: str, version: int, **extra: Any) -> None:
        self.events.append({"event": kind, "model": f"{name}/{version}", "time": time.time(), **extra})

    def models(self) -> list[dict[str, Any]]:
        """Model ids this server answers for now: the base, followed aliases and loaded versions."""
        with self._lock:
            rows = [{"id": BASE_MODEL_ID, "version": None}]
            rows += [{"id": f"{n}@{a}", "version": v} for (n, a), v in sorted(self.aliases.items())]
            rows += [{"id": a.model_id, "version": a.version, "in_use": a.refs} for a in self.loaded.values()]
        return rows
