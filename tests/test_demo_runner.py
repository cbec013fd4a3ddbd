"""The demo keeps Prefect's home inside a demo directory that does not exist yet (a fresh clone's `make demo`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import sys
from pipeline.demo.runner import use_demo_prefect_home
use_demo_prefect_home(sys.argv[1])
import prefect  # reads PREFECT_HOME and creates it on import
from prefect.settings import get_current_settings
print(get_current_settings().server.ephemeral.startup_timeout_seconds)
print(get_current_settings().home)
"""


def test_prefect_home_is_created_inside_a_new_demo_dir(tmp_path: Path) -> None:
    demo_dir = tmp_path / "fresh" / "demo-output"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_HOME", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
    }
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(demo_dir)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "Failed to create the Prefect home directory" not in proc.stderr
    timeout, home_line = proc.stdout.strip().splitlines()[-2:]
    assert int(timeout) >= 120  # a first start migrates a new database: Prefect's 20 s default is too short here
    home = Path(home_line)
    assert home == (demo_dir / "prefect").resolve()
    assert home.is_dir()
