"""Every module imports: catches names used but never defined, and broken wiring."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

PACKAGES = ("pipeline", "flows", "schemas")


def _modules() -> list[str]:
    names = []
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.append(pkg_name)
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg_name}.")]
    return sorted(names)


@pytest.mark.parametrize("module", _modules())
def test_module_imports(module: str) -> None:
    """Importing the module raises nothing."""
    assert importlib.import_module(module) is not None


def test_all_stage_modules_found() -> None:
    """The walk really sees the stage modules (an empty walk would make the test above vacuous)."""
    found = set(_modules())
    assert {
        "pipeline.train.recipe",
        "pipeline.evaluate.forgetting",
        "flows.ingest_flow",
        "flows.train_flow",
        "schemas.pairs",
        "pipeline.cli",
    } <= found
