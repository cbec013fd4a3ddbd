"""Wall time of a fresh and a second `lora-pipeline demo`, and what the demo adapter learned vs the base.

Run: .venv/bin/python bench/demo_time.py [--dir /tmp/demo-bench] [--make]
  --make times `make demo` (installs included) instead of `lora-pipeline demo` (installs already done).
Writes bench/results/demo_time.json and prints a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = (
    "task/loss_nats/base",
    "task/loss_nats/adapter",
    "demo/task_loss_reduction",
    "task/rouge_l/base",
    "task/rouge_l/adapter",
    "demo/fact_accuracy_base",
    "demo/fact_accuracy_adapter",
    "demo/fact_questions",
    "forgetting/general_suite_mc/acc_base",
    "demo/general_mc_chance",
    "gate/passed",
)


def _run(cmd: list[str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as out:
        subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - started


def _metrics(demo_dir: Path) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{demo_dir / 'mlflow.db'}")
    runs = client.search_runs(client.search_experiments()[0:1][0].experiment_id, order_by=["start_time DESC"])
    data = runs[0].data.metrics
    return {k: data[k] for k in KEYS if k in data}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dir", type=Path, default=Path("/tmp/demo-bench"))
    p.add_argument("--make", action="store_true", help="time `make demo` (with installs) instead")
    args = p.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    demo_dir = args.dir / "out"
    if args.make:
        cmd = ["make", "demo", f"DEMO_DIR={demo_dir}"]
    else:
        cmd = [str(Path(sys.executable).parent / "lora-pipeline"), "demo", "--dir", str(demo_dir)]
    fresh = _run(cmd, args.dir / "fresh.log")
    second = _run(cmd, args.dir / "second.log")
    result = {"command": " ".join(cmd), "fresh_s": round(fresh, 1), "second_s": round(second, 1)}
    result["metrics"] = _metrics(demo_dir)
    out = ROOT / "bench" / "results" / "demo_time.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
