"""Sections 3-5: malformed tasks, and the secret canary and concurrent promotions run as pytest subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.reliability.common import REPO


def malformed(work: Path, n: int, seed: int) -> dict[str, Any]:
    from bench.malformed_tasks import malformed_tasks, run_malformed

    failures: list[str] = []
    t = time.perf_counter()
    counts = run_malformed(malformed_tasks(n, seed), workdir=work, failures=failures)
    return {"seed": seed, "counts": counts, "seconds": time.perf_counter() - t, "first_tracebacks": failures[:3]}


PROBE = '''"""pytest plugin of bench/reliability/inputs.py: what a test found, from its own locals and result files."""
import json
import os
from pathlib import Path

import pytest

OUT = Path(os.environ["RELIABILITY_PROBE_OUT"])


def _locals(excinfo, name):
    for entry in reversed(excinfo.traceback if excinfo else []):
        if entry.frame.code.name == name:
            return entry.locals
    return {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if call.when != "call" and not report.failed:
        return
    found = {"test": item.nodeid, "when": call.when, "outcome": report.outcome, "seconds": call.duration}
    tmp = item.funcargs.get("tmp_path")
    local = _locals(call.excinfo, item.originalname)
    if item.originalname == "test_canary_credentials_appear_in_no_file_and_no_output" and call.when == "call":
        if "hits" in local:
            found["hits"] = [str(h) for h in local["hits"]]
        elif report.passed:
            found["hits"] = []  # the test asserted hits == []
        roots = [tmp / "mlflow", tmp / "prefect", tmp / "work"]
        found["files_searched"] = sum(1 for r in roots if r.is_dir() for f in r.rglob("*") if f.is_file())
    if item.originalname == "test_two_concurrent_promotions_have_one_winner" and call.when == "call":
        found["results"] = [json.loads(p.read_text()) for p in sorted(tmp.glob("out*.json"))]
        found["winners"] = sum(r.get("version") is not None for r in found["results"])
    if report.failed:
        found["error"] = report.longreprtext[-3000:]
    with OUT.open("a") as f:
        f.write(json.dumps(found) + "\\n")
'''


def run_tests(work: Path, name: str, args: list[str]) -> dict[str, Any]:
    """Run pytest on `args` with the probe plugin; its findings, exit code and summary line."""
    probe_dir = work / "probe"
    probe_dir.mkdir(exist_ok=True)
    (probe_dir / "reliability_probe.py").write_text(PROBE)
    out = work / f"probe-{name}.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(probe_dir), str(REPO), os.environ.get("PYTHONPATH")])),
        "RELIABILITY_PROBE_OUT": str(out),
    }
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "reliability_probe", *args]
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600, check=False)
    (work / f"pytest-{name}.log").write_text(done.stdout + done.stderr)
    found = [json.loads(ln) for ln in out.read_text().splitlines()] if out.exists() else []
    summary = next((ln for ln in reversed(done.stdout.splitlines()) if ln.strip()), "")
    return {
        "command": " ".join(["python", *cmd[1:]]),
        "returncode": done.returncode,
        "summary": summary,
        "seconds": time.perf_counter() - t,
        "tests": found,
        "output_tail": (done.stdout + done.stderr)[-3000:] if done.returncode else "",
    }
