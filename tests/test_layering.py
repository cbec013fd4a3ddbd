"""Dependencies point one way: each stage room imports only what its docstring allows.

Every module of a room is imported in a fresh interpreter; the test then looks at `sys.modules`
(what was really loaded, transitively) rather than at the source text, so an indirect import
through a helper counts too.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "validate", "train", "evaluate", "track", "serve", "demo")

# (room, forbidden module prefixes). A prefix matches the module itself and its submodules.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "ingest": (
        "torch",
        "transformers",
        "peft",
        "mlflow",
        "prefect",
        "flows",
        "pipeline.validate",
        "pipeline.train",
        "pipeline.evaluate",
        "pipeline.track",
        "pipeline.demo",
    ),
    "validate": (
        "torch",
        "peft",
        "mlflow",
        "prefect",
        "flows",
        "pipeline.train",
        "pipeline.evaluate",
        "pipeline.track",
        "pipeline.demo",
    ),
    "train": ("mlflow", "prefect", "flows", "pipeline.evaluate", "pipeline.track", "pipeline.demo"),
    "evaluate": ("mlflow", "prefect", "flows", "pipeline.train.recipe", "pipeline.track", "pipeline.demo"),
    "track": ("prefect", "flows", "pipeline.serve", "pipeline.demo"),
    "serve": ("prefect", "flows", "pipeline.train.recipe", "pipeline.evaluate", "pipeline.demo"),
    "demo": ("prefect", "flows"),
}
# Single modules with a tighter rule than their room.
FORBIDDEN_MODULES: dict[str, tuple[str, ...]] = {
    "pipeline.track.tracking": ("torch", "transformers", "peft", "pipeline.train.recipe"),
    "pipeline.train.results": ("torch", "transformers", "peft"),
    "pipeline.config": ("torch", "transformers", "mlflow", "prefect", "flows", "pipeline.ingest", "pipeline.demo"),
    # An ingest run that finds no new annotations must not pay for the training stack's imports, nor for the
    # validation stack's (tokenizer, pandera, Arrow datasets): those load only when a pull brought something new.
    "flows.ingest_flow": (
        "torch",
        "peft",
        "lm_eval",
        "transformers",
        "pandera",
        "datasets",
        "pipeline.train",
        "pipeline.evaluate",
        "pipeline.validate.prepare",
        "flows.train_tasks",
    ),
    # Every flow run starts with this command (prefect.yaml): it must start in milliseconds.
    "flows.warm_start": ("prefect", "torch", "mlflow", "pydantic", "pipeline", "flows.warm_worker", "httpx"),
}

_PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def room_modules(room: str) -> list[str]:
    """Every module of `pipeline.<room>`, the package itself first."""
    package = f"pipeline.{room}"
    path = [str(Path(pipeline.__file__).parent / room)]
    return [package, *sorted(m.name for m in pkgutil.walk_packages(path, prefix=f"{package}."))]


def imported_by(*modules: str) -> set[str]:
    """The modules loaded by importing `modules` in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *modules], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"importing {modules} failed:\n{proc.stderr[-3000:]}"
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def violations(loaded: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(prefix for prefix in forbidden if any(m == prefix or m.startswith(prefix + ".") for m in loaded))


def test_every_room_is_a_documented_package() -> None:
    rooms = sorted(p.parent.name for p in Path(pipeline.__file__).parent.glob("*/__init__.py"))
    assert rooms == sorted(STAGES)
    for room in STAGES:
        doc = __import__(f"pipeline.{room}", fromlist=["_"]).__doc__ or ""
        assert "May import" in doc, f"pipeline/{room}/__init__.py must say what it may import"


def test_rooms_have_modules() -> None:
    for room in STAGES:
        assert len(room_modules(room)) > 1, room


@pytest.mark.parametrize("room", STAGES)
def test_room_imports_point_one_way(room: str) -> None:
    loaded = imported_by(*room_modules(room))
    assert violations(loaded, FORBIDDEN[room]) == [], f"pipeline.{room} imported forbidden modules"


@pytest.mark.parametrize("module", sorted(FORBIDDEN_MODULES))
def test_module_stays_light(module: str) -> None:
    assert violations(imported_by(module), FORBIDDEN_MODULES[module]) == []


def test_no_core_module_imports_the_demo() -> None:
    core = [m for room in STAGES if room != "demo" for m in room_modules(room)]
    core += [
        "pipeline.config",
        "pipeline.chat_format",
        "pipeline.jsonl",
        "pipeline.cli",
        "pipeline.base_model",
        "flows.ingest_flow",
        "flows.train_flow",
    ]
    assert violations(imported_by(*core), ("pipeline.demo",)) == []


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The probe is real: a module that imports torch is caught through an innocent-looking chain."""
    pkg = tmp_path / "probe_room"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text("import torch  # noqa: F401\n")
    (pkg / "stage.py").write_text("from probe_room import helper  # noqa: F401\n")
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, "probe_room.stage"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert violations(loaded, FORBIDDEN["ingest"]) == ["torch"]
