"""Label Studio pull benchmark: our chunked full + incremental pull vs the SDK's paginated list and the sync export.

Run (starts its own Label Studio on a free loopback port; about 5 minutes on 2 cores):
    .venv/bin/python bench/ingest_bench.py --tasks 10000
Writes bench/results/ingest.json and bench/results/ingest.md. Not run in CI (no timed tests).

All methods run in one process against the same server, one after another:
  (a) sdk_paginated   `ls.tasks.list(project=..., fields="all", page_size=100)`, every page
  (b) sync_export     one `GET /api/projects/{id}/export?export_type=JSON&download_all_tasks=true`
  (c) full_pull       pipeline.labelstudio.pull.pull_tasks(full=True): id-range chunks via the export
                      endpoint, `workers` requests in flight, normalized to PairRecords, task file written
  (d) incremental     the same after 1% of tasks had an annotation edited
Per method: wall time, tasks/s, the slowest single request and the largest single response body.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import LabelStudioConfig
from pipeline.labelstudio import client as ls_client
from pipeline.labelstudio.client import annotation_result, connect, ensure_project
from pipeline.labelstudio.pull import pull_tasks
from pipeline.labelstudio.server import LocalLabelStudio

RESULTS = Path(__file__).resolve().parent / "results"
CATS = ("billing", "shipping")


class RequestLog:
    """httpx event hooks: the slowest request and the largest response of a measured block."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count, self.slowest_s, self.largest_bytes = 0, 0.0, 0

    def on_request(self, request: httpx.Request) -> None:
        request.extensions["t0"] = time.perf_counter()

    def on_response(self, response: httpx.Response) -> None:
        response.read()
        self.count += 1
        self.slowest_s = max(self.slowest_s, time.perf_counter() - response.request.extensions["t0"])
        self.largest_bytes = max(self.largest_bytes, len(response.content))


def seed(client: Any, project_id: int, n: int) -> list[int]:
    """n tasks: 96% annotated, 2% skipped, 2% untouched; imported with their annotations in batches."""
    ids: list[int] = []
    for start in range(0, n, 1000):
        batch = []
        for i in range(start, min(n, start + 1000)):
            task: dict[str, Any] = {"data": {"prompt": f"Customer question {i}: " + "where is my parcel? " * 10}}
            if i % 50 == 0:
                task["annotations"] = [{"result": [], "was_cancelled": True}]
            elif i % 50 != 1:
                text = f"Answer {i}: " + "it left the depot this morning and arrives tomorrow. " * 6
                task["annotations"] = [{"result": annotation_result(text, CATS[i % 2]), "ground_truth": False}]
            batch.append(task)
        r = client.projects.import_tasks(id=project_id, request=batch, return_task_ids=True)
        ids.extend(int(t) for t in r.task_ids)
    return ids


def measure(name: str, log: RequestLog, fn: Callable[[], int], n_expected: int) -> dict[str, Any]:
    log.reset()
    t0 = time.perf_counter()
    n = fn()
    wall = time.perf_counter() - t0
    if n != n_expected:
        raise AssertionError(f"{name} returned {n} tasks, expected {n_expected}")
    row = {
        "method": name,
        "tasks": n,
        "wall_s": round(wall, 2),
        "tasks_per_s": round(n / wall, 1),
        "requests": log.count,
        "slowest_request_s": round(log.slowest_s, 2),
        "largest_response_mb": round(log.largest_bytes / 1e6, 2),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument(
        "--configs", nargs="+", default=["2x500", "2x900", "4x900"], help="full-pull settings WORKERSxCHUNK to compare"
    )
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    log = RequestLog()
    with LocalLabelStudio(data_dir=scratch / "labelstudio") as server:
        # A generous timeout so that (b), one request for the whole project, is measured rather than cut off.
        client = connect(server.url, server.token, timeout_s=900)
        # Hooks on the client's own httpx client: every SDK and raw call is measured.
        http = client._client_wrapper.httpx_client.httpx_client
        http.event_hooks = {"request": [log.on_request], "response": [log.on_response]}
        project = ensure_project(client, "ingest-bench", CATS)
        t0 = time.perf_counter()
        ids = seed(client, project.id, args.tasks)
        print(f"seeded {len(ids)} tasks in {time.perf_counter() - t0:.1f}s", flush=True)
        rows: list[dict[str, Any]] = []

        def sdk_paginated() -> int:
            return sum(1 for _ in client.tasks.list(project=project.id, fields="all", page_size=100))

        def sync_export() -> int:
            body = ls_client.raw_get(
                client, f"/api/projects/{project.id}/export", {"export_type": "JSON", "download_all_tasks": "true"}
            )
            return len(body)

        snapshots = scratch / "snapshots"

        def ours(workers: int, chunk: int, full: bool) -> Callable[[], int]:
            def run() -> int:
                cfg = LabelStudioConfig(
                    project_id=project.id, categories=CATS, workers=workers, export_chunk_size=chunk
                )
                pulled = pull_tasks(client, server.url, project.id, cfg, snapshots_root=snapshots, full=full)
                run.source = pulled.source  # type: ignore[attr-defined]
                return pulled.normalized.tasks_seen

            return run

        rows.append(measure("sdk_paginated (a)", log, sdk_paginated, len(ids)))
        rows.append(measure("sync_export (b)", log, sync_export, len(ids)))
        last = None
        for spec in args.configs:
            w, c = (int(x) for x in spec.split("x"))
            last = ours(w, c, True)
            rows.append(measure(f"full_pull workers={w} chunk={c}", log, last, len(ids)))
        rows.append(measure("sync_export (b), again", log, sync_export, len(ids)))

        # The incremental pull starts from the full pull's watermark, which lives in a snapshot's metadata.
        assert last is not None
        snap = snapshots / "00000000T000000000000Z-bench"
        snap.mkdir(parents=True)
        (snap / "snapshot.json").write_text(json.dumps({"source": last.source}))  # type: ignore[attr-defined]
        changed = ids[::100]
        for t in ls_client.export_tasks(client, project.id, changed):
            anns = [a for a in t["annotations"] if not a["was_cancelled"]]
            if anns:
                client.annotations.update(id=anns[0]["id"], result=annotation_result(f"Edited {t['id']}.", "billing"))
            else:
                client.annotations.create(id=t["id"], result=annotation_result(f"New {t['id']}.", "billing"))
        incr = ours(2, 500, False)
        rows.append(measure(f"incremental ({len(changed)} tasks changed)", log, incr, len(ids)))
        source = incr.source  # type: ignore[attr-defined]
        if source["mode"] != "incremental" or source["tasks_changed"] != len(changed):
            raise AssertionError(f"incremental pull fetched {source['tasks_changed']} tasks, expected {len(changed)}")

    by = {r["method"]: r for r in rows}
    best_full = min((r for r in rows if r["method"].startswith("full_pull")), key=lambda r: r["wall_s"])
    export_best = min(by["sync_export (b)"]["wall_s"], by["sync_export (b), again"]["wall_s"])
    incr_row = rows[-1]
    summary = {
        "best_full_pull": best_full["method"],
        "full_vs_sdk_paginated_speedup": round(by["sdk_paginated (a)"]["wall_s"] / best_full["wall_s"], 2),
        "full_vs_sync_export_speedup": round(export_best / best_full["wall_s"], 2),
        "incremental_share_of_full": round(incr_row["wall_s"] / best_full["wall_s"], 3),
        "slowest_request_of_our_pulls_s": max(
            r["slowest_request_s"] for r in rows if r["method"].startswith(("full_pull", "incremental"))
        ),
    }
    result = {
        "command": "python bench/ingest_bench.py " + " ".join(sys.argv[1:]),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": _cpus()},
        "rows": rows,
        "summary": summary,
        "notes": "full_pull includes normalization to PairRecords and writing the task file; (a) and (b) only "
        "fetch and parse. Label Studio runs its single-process dev server (label-studio start) on the same machine.",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["# Label Studio pull benchmark", "", f"`{result['command']}`", "", result["notes"], ""]
    md += ["| method | tasks | wall s | tasks/s | requests | slowest request s | largest response MB |"]
    md += ["|---|---|---|---|---|---|---|"]
    md += [
        f"| {r['method']} | {r['tasks']} | {r['wall_s']} | {r['tasks_per_s']} | {r['requests']} | "
        f"{r['slowest_request_s']} | {r['largest_response_mb']} |"
        for r in rows
    ]
    md += ["", *[f"- {k}: {v}" for k, v in summary.items()], ""]
    (RESULTS / "ingest.md").write_text("\n".join(md))
    print(json.dumps(summary, indent=2))
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


if __name__ == "__main__":
    sys.exit(main())
