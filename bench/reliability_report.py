"""Reliability report (issue 17: nothing lost, nothing leaked, nothing executed), measured with real processes and
servers: kills survived, outages ridden, malformed inputs, secret hits, concurrent promotions.

Run (about 15 minutes on 2 busy cores, --quick under 10; needs $LABEL_STUDIO_BIN or .venv-labelstudio):
    .venv/bin/python bench/reliability_report.py
Writes bench/results/reliability.md (one table) and reliability.json (raw numbers). Not run in CI.

1. Kills survived: --kills N random points per kind (default 5), each a fresh `python` running this file as a worker
   on the tiny model built offline (pipeline/demo/tiny_model.py) and throwaway sqlite MLflow stores.
   training   train_adapter (40 rows, batch 4, 2 epochs = 20 steps, checkpoint every 2 steps, keep 2) SIGKILLs
              itself from its step hook at a random step (as tests/test_train_resume.py: a kill from outside would
              race millisecond steps), then resumes here with resume=True. Survived: it reaches step 20 and its
              adapter equals an unbroken run's (max abs diff <= 1e-6).
   snapshot   write_snapshot of 3,000 records next to a previous snapshot, SIGKILLed after delays spread over the
              shorter of two unkilled writes. Survived: every directory not named as a temp dir has snapshot.json,
              all its files, and load_snapshot verifies its hash; the previous snapshot's bytes are unchanged.
   logging    claim_run (sqlite store) then StepLogger as the train flow makes it, a step every 20 ms; SIGKILLed at
              a random time from just before the claim (over the claim's time + 3 s); then mark_orphaned_runs.
              Survived: the run ends KILLED with a killed_reason tag (or none was created yet), none RUNNING or
              FINISHED.
   promotion  promote() (registry lock, log_model, register_model, alias) of a trained tiny adapter that passed the
              gate, sqlite registry, SIGKILLed after delays spread over the latest unkilled promotion's duration
              (the child assesses first, outside that window). Survived: every version in the registry downloads
              (models:/name/version) with peft/adapter_model.safetensors, the killed run is not FINISHED, and a
              promotion in a fresh process then succeeds (the registry lock is not stuck).
2. Outages ridden
   mlflow     a real `mlflow server` (tests/conftest.py), StepLogger(uri, run) as flows/train_tasks.py makes it, a
              synthetic step every 0.1 s throughout; the server is stopped for --mlflow-outage-s (default 120) and
              started again on the same port; then flush. The slowest step call (goal < 0.1 s) and whether every
              metric arrived.
   label studio  a real LocalLabelStudio with the demo project (seed_project, 200 tasks); a full pull_project
              (project_id, outage_patience_s 300) runs in a thread through tests/test_ingest_outage.py's slow
              loopback proxy (0.25 s a request, 2 tasks a request, so the outage lands mid-pull) while the server
              is stopped for --ls-outage-s (default 60) and started on the same port. Same tasks as a clean pull?
3. Malformed inputs: bench/malformed_tasks.py, --malformed N tasks (default 10,000) through the export-file path.
4. Secret hits: tests/test_secrets_canary.py in a pytest subprocess (a whole `lora-pipeline run` with canary
   credentials, every file it wrote grepped); the hits are read from the test's own `hits` list by a small pytest
   plugin this bench writes to its temp dir, so a failure reports them rather than just "failed".
5. Concurrent promotions: tests/test_registry.py -k concurrent (two processes promote at once, on a fresh SQLite
   store and on a server); the same plugin reads each process's result file to count the winners.
--skip-tests leaves out 4 and 5. --quick: 1 kill per kind, a 60 s MLflow outage, 2,000 malformed tasks.
The measurements live in bench/reliability/ (kills, outages, inputs; workers are what a killed process runs; table
builds the report); this file parses the options, runs the sections in order and writes the report.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("DISABLE_PANDERA_IMPORT_WARNING", "True")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reliability.common import REPO, log
from bench.reliability.inputs import malformed, run_tests
from bench.reliability.kills import kills_logging, kills_promotion, kills_snapshot, kills_training
from bench.reliability.outages import outage_label_studio, outage_mlflow
from bench.reliability.table import SECTIONS, load_average, machine_facts, table, write_report
from bench.reliability.workers import WORKERS


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from pipeline.demo.tiny_model import build_tiny_model

    wanted = [s for s in SECTIONS if s in (args.only or SECTIONS)]
    if args.skip_tests:
        wanted = [s for s in wanted if s not in ("secrets", "concurrent")]
    rng = random.Random(args.seed)
    model_dir: Path | None = None
    if {"kill_training", "kill_promotion"} & set(wanted):
        t = time.perf_counter()
        model_dir = build_tiny_model(work / "tiny-model")
        log(f"tiny model built in {time.perf_counter() - t:.0f} s")
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "kill_training": lambda: kills_training(work, model_dir, args.kills, rng),  # type: ignore[arg-type]
        "kill_snapshot": lambda: kills_snapshot(work, args.kills, rng),
        "kill_logging": lambda: kills_logging(work, args.kills, rng),
        "kill_promotion": lambda: kills_promotion(work, model_dir, args.kills, rng),  # type: ignore[arg-type]
        "outage_mlflow": lambda: outage_mlflow(work, args.mlflow_outage_s),
        "outage_label_studio": lambda: outage_label_studio(work, args.ls_outage_s),
        "malformed": lambda: malformed(work, args.malformed, args.malformed_seed),
        "secrets": lambda: run_tests(work, "secrets", ["tests/test_secrets_canary.py"]),
        "concurrent": lambda: run_tests(work, "concurrent", ["tests/test_registry.py", "-k", "concurrent"]),
    }
    sections: dict[str, Any] = {}
    for name in wanted:
        log(f"{name} ...")
        t = time.perf_counter()
        try:
            sections[name] = steps[name]()
        except Exception as e:
            # One broken measurement must not throw away the others: it becomes a row that says so (met: no),
            # and main() exits non-zero.
            sections[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}", "traceback": traceback.format_exc()}
        sections[name]["section_s"] = time.perf_counter() - t
        log(f"{name} done in {sections[name]['section_s']:.0f} s: {json.dumps(sections[name], default=str)[:600]}")
    return sections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kills", type=int, default=5, help="random kill points per kind")
    parser.add_argument("--mlflow-outage-s", type=float, default=120.0)
    parser.add_argument("--ls-outage-s", type=float, default=60.0)
    parser.add_argument("--malformed", type=int, default=10_000, help="malformed tasks to parse")
    parser.add_argument("--malformed-seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="1 kill per kind, 60 s MLflow outage, 2,000 malformed")
    parser.add_argument("--skip-tests", action="store_true", help="leave out rows 4 and 5 (the pytest subprocesses)")
    parser.add_argument("--only", type=lambda v: v.split(","), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--seed", type=int, help="seed of the kill points and delays (default: a fresh one)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (stores, logs, snapshots)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        WORKERS[args.worker](json.loads(args.spec))
        return
    if args.quick:
        args.kills, args.mlflow_outage_s, args.malformed = 1, 60.0, 2000
    if args.only and not set(args.only) <= set(SECTIONS):
        parser.error(f"--only takes names from {','.join(SECTIONS)}")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**31)
    command = "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    machine = machine_facts()
    log(f"{command} (seed {args.seed}), machine {machine}")
    work = Path(tempfile.mkdtemp(prefix="reliability-bench-"))
    t = time.perf_counter()
    sections = run(args, work)
    machine["load_end"] = load_average()
    raw = {"command": command, "seed": args.seed, "machine": machine, "wall_s": time.perf_counter() - t}
    raw["sections"] = sections
    rows = table(sections)
    text = write_report(args.out, raw, rows)
    print(text)
    if args.keep or any("error" in s for s in sections.values()):
        print(f"kept {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    broken = [name for name, s in sections.items() if "error" in s]
    if broken:
        raise SystemExit(f"measurements that broke (rows say so): {', '.join(broken)}")


if __name__ == "__main__":
    main()
