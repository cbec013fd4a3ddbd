"""Label Studio pull benchmark: our chunked full + incremental pull vs the SDK's paginated list and the sync export.

Run (starts its own Label Studio on free loopback ports and seeds it; about 20 minutes on 2 cores):
    .venv/bin/python bench/ingest_bench.py --tasks 10000 --rounds 3 --configs 2x900 4x900 4x250 \
        --servers dev gunicorn:2 gunicorn:4 --memory-sizes 2000 10000
Writes bench/results/ingest.json and bench/results/ingest.md (`--out NAME` for NAME.json/.md). Not run in CI.

Servers (`--servers`, each measured in turn over the same seeded data dir and SQLite database):
  dev          `label-studio start`: Django's single-process development server (runserver), which runs one
               request's Python at a time. It seeds the data dir (migrations, admin user, API token) first.
  gunicorn:N   the same Label Studio, settings and database served by gunicorn with N sync worker processes,
               the model of Label Studio's Docker image (uwsgi, several processes, 1 thread each). gunicorn is
               installed into .venv-labelstudio on demand (`pip install gunicorn`); see bench/ls_gunicorn.py.

Methods, all in this process against the server under test:
  (a)  sdk_paginated        `ls.tasks.list(project=..., fields="all", page_size=100)`, every page (once per server)
  (b)  sync_export          one `GET /api/projects/{id}/export?export_type=JSON&download_all_tasks=true`, parsed
  (b') sync_export+normalize (b), then exactly the client work our pull does: canonical tasks in id order,
                            normalized to PairRecords (`stored_task`), the task store written (`StoreWriter`),
                            outcomes collected into the three frames, the watermark's recent-stamp scan
  (c)  full_pull WxC        pipeline.ingest.pull.pull_tasks(full=True): id-range export chunks of at most C
                            ids, W requests in flight, normalized, task store written
  (d)  incremental          pull_tasks() from the previous pull's watermark after 1% of tasks had an annotation
                            edited (a fresh 1% each round)
(b), (b') and (c) alternate for `--rounds` rounds (their order rotates each round), then (d); the summary
compares medians per server. Per method: wall time, tasks/s, requests, the slowest single request, the
largest response body, the longest request line, client CPU seconds and Label Studio's CPU seconds (all its
processes, from /proc).

Client memory: a full pull runs in a fresh subprocess per project size under tracemalloc (against the dev
server). `peak` is the most memory Python held during the pull; `result` what it still holds afterwards (the
PairRecords frames, which grow with the project by nature); `working = peak - result` is what fetching and
normalizing cost on top, which must not grow with the project size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest_report import markdown, summarize
from ls_gunicorn import GunicornLabelStudio, ensure_gunicorn, gunicorn_version

from pipeline.config import LabelStudioConfig
from pipeline.ingest import client as ls_client
from pipeline.ingest.client import annotation_result, connect, ensure_project
from pipeline.ingest.incremental import canonical_task, overlap_floor, updated_after
from pipeline.ingest.pull import pull_tasks
from pipeline.ingest.records import OutcomeCollector
from pipeline.ingest.server import LocalLabelStudio, find_label_studio_bin
from pipeline.ingest.task_store import STORE_DIR, StoreWriter, stored_task

RESULTS = Path(__file__).resolve().parent / "results"
CATS = ("billing", "shipping")
_TICK = os.sysconf("SC_CLK_TCK")


class RequestLog:
    """httpx event hooks: the slowest request and the largest response of a measured block."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count, self.slowest_s, self.largest_bytes, self.longest_line = 0, 0.0, 0, 0

    def on_request(self, request: httpx.Request) -> None:
        request.extensions["t0"] = time.perf_counter()
        # "GET <path?query> HTTP/1.1": servers and proxies cap it (gunicorn 4094 bytes, nginx 8 KB by default).
        line = len(request.method) + len(request.url.raw_path) + len(" HTTP/1.1") + 1
        self.longest_line = max(self.longest_line, line)

    def on_response(self, response: httpx.Response) -> None:
        response.read()
        self.count += 1
        self.slowest_s = max(self.slowest_s, time.perf_counter() - response.request.extensions["t0"])
        self.largest_bytes = max(self.largest_bytes, len(response.content))


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in a process group (the server and its workers)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        if int(fields[2]) == pgid:  # fields after "(comm)": state ppid pgrp ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


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


def edit(client: Any, project_id: int, task_ids: list[int], tag: str) -> None:
    """Edit the submitted annotation of each task (or add one), as annotators fixing rows would."""
    for t in ls_client.export_tasks(client, project_id, task_ids):
        anns = [a for a in t["annotations"] if not a["was_cancelled"]]
        result = annotation_result(f"Edited {t['id']} ({tag}).", "billing")
        if anns:
            client.annotations.update(id=anns[0]["id"], result=result)
        else:
            client.annotations.create(id=t["id"], result=result)


def bench_client(url: str, token: str, log: RequestLog) -> Any:
    # A generous timeout so that (b), one request for the whole project, is measured rather than cut off.
    client = connect(url, token, timeout_s=900)
    # Hooks on the client's own httpx client: every SDK and raw call is measured.
    client._client_wrapper.httpx_client.httpx_client.event_hooks = {
        "request": [log.on_request],
        "response": [log.on_response],
    }
    return client


def _config(project_id: int, spec: str) -> LabelStudioConfig:
    workers, chunk = (int(x) for x in spec.split("x"))
    return LabelStudioConfig(project_id=project_id, categories=CATS, workers=workers, export_chunk_size=chunk)


class Bench:
    """The methods of one server, measured with the request log and the server's CPU counter."""

    def __init__(self, server: str, url: str, token: str, pgid: int, project_id: int, scratch: Path) -> None:
        self.server, self.url, self.pgid, self.project_id = server, url, pgid, project_id
        self.log = RequestLog()
        self.client = bench_client(url, token, self.log)
        self.snapshots = scratch / f"snapshots-{server}"
        self.last_source: dict[str, Any] = {}

    def measure(self, name: str, fn: Callable[[], int], n_expected: int) -> dict[str, Any]:
        self.log.reset()
        server0, cpu0, t0 = group_cpu_s(self.pgid), time.process_time(), time.perf_counter()
        n = fn()
        wall = time.perf_counter() - t0
        cpu, server_cpu = time.process_time() - cpu0, group_cpu_s(self.pgid) - server0
        if n != n_expected:
            raise AssertionError(f"{self.server}: {name} returned {n} tasks, expected {n_expected}")
        row = {
            "server": self.server,
            "method": name,
            "tasks": n,
            "wall_s": round(wall, 2),
            "tasks_per_s": round(n / wall, 1),
            "requests": self.log.count,
            "slowest_request_s": round(self.log.slowest_s, 2),
            "largest_response_mb": round(self.log.largest_bytes / 1e6, 2),
            "longest_request_line_bytes": self.log.longest_line,
            "client_cpu_s": round(cpu, 2),
            "server_cpu_s": round(server_cpu, 2),
        }
        print(json.dumps(row), flush=True)
        return row

    def sdk_paginated(self) -> int:
        return sum(1 for _ in self.client.tasks.list(project=self.project_id, fields="all", page_size=100))

    def _export_all(self) -> list[dict[str, Any]]:
        body = ls_client.raw_get(
            self.client,
            f"/api/projects/{self.project_id}/export",
            {"export_type": "JSON", "download_all_tasks": "true"},
        )
        assert isinstance(body, list)
        return body

    def sync_export(self) -> int:
        return len(self._export_all())

    def sync_export_normalized(self) -> int:
        """(b'): the single export, then the client work of pull_tasks(full=True) on its tasks."""
        cfg = _config(self.project_id, "1x900")
        tasks = sorted((canonical_task(t) for t in self._export_all()), key=lambda t: t["id"])
        floor = overlap_floor(datetime.now(UTC), cfg.watermark_overlap_s)
        collector, recent = OutcomeCollector(), {}
        with StoreWriter(self.snapshots / STORE_DIR, self.project_id) as store:
            for task in tasks:
                item = stored_task(task, project_id=self.project_id, rule=cfg.annotation_rule)
                store.write(item)
                collector.add(item.outcome)
                if item.stamp is not None and updated_after(item.stamp, floor):
                    recent[str(item.id)] = item.stamp
        return collector.result(sort_by_task_id=True).tasks_seen

    def pull(self, spec: str, full: bool) -> Callable[[], int]:
        def run() -> int:
            pulled = pull_tasks(
                self.client,
                self.url,
                self.project_id,
                _config(self.project_id, spec),
                snapshots_root=self.snapshots,
                full=full,
            )
            self.last_source = dict(pulled.source)
            # The next incremental pull starts from this watermark, which lives in a snapshot's metadata.
            snap = self.snapshots / "00000000T000000000000Z-bench"
            snap.mkdir(parents=True, exist_ok=True)
            (snap / "snapshot.json").write_text(json.dumps({"source": pulled.source}))
            return pulled.normalized.tasks_seen

        return run

    def rounds(self, ids: list[int], args: argparse.Namespace, first_round: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        if not args.skip_sdk:
            rows.append(self.measure("sdk_paginated (a)", self.sdk_paginated, len(ids)))
        for r in range(1, args.rounds + 1):
            methods: list[tuple[str, Callable[[], int]]] = [
                ("sync_export (b)", self.sync_export),
                ("sync_export+normalize (b')", self.sync_export_normalized),
                *((f"full_pull {spec}", self.pull(spec, True)) for spec in args.configs),
            ]
            shift = (r - 1) % len(methods)
            for name, fn in methods[shift:] + methods[:shift]:
                rows.append(self.measure(f"{name} round {r}", fn, len(ids)))
            # The incremental pull starts from the watermark of this round's last full pull.
            k = first_round + r - 1
            changed = ids[k % 100 :: 100]
            edit(self.client, self.project_id, changed, f"{self.server} round {r}")
            rows.append(self.measure(f"incremental 1% round {r}", self.pull(args.configs[0], False), len(ids)))
            if self.last_source["mode"] != "incremental" or self.last_source["tasks_changed"] != len(changed):
                raise AssertionError(
                    f"{self.server}: incremental pull fetched {self.last_source['tasks_changed']}, "
                    f"expected {len(changed)}"
                )
        return rows


def memory_child() -> int:
    """In a fresh interpreter: one full pull under tracemalloc; prints its memory figures as JSON."""
    url, token, project_id, spec = (os.environ[k] for k in ("BENCH_URL", "BENCH_TOKEN", "BENCH_PROJECT", "BENCH_SPEC"))
    client = connect(url, token, timeout_s=300)
    root = Path(tempfile.mkdtemp(prefix="ingest-bench-mem-"))
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    pulled = pull_tasks(client, url, int(project_id), _config(int(project_id), spec), snapshots_root=root, full=True)
    after, peak = tracemalloc.get_traced_memory()
    print(
        json.dumps(
            {
                "tasks": pulled.normalized.tasks_seen,
                "peak_mb": round((peak - before) / 1e6, 1),
                "result_mb": round((after - before) / 1e6, 1),
                "working_mb": round((peak - after) / 1e6, 1),
            }
        )
    )
    return 0


def memory_at(url: str, token: str, project_id: int, spec: str) -> dict[str, Any]:
    env = {**os.environ, "BENCH_URL": url, "BENCH_TOKEN": token, "BENCH_PROJECT": str(project_id), "BENCH_SPEC": spec}
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child"], env=env, capture_output=True, text=True, check=True
    ).stdout
    row = json.loads(out.strip().splitlines()[-1])
    print(json.dumps({"memory": row}), flush=True)
    return row


def _server_workers(spec: str) -> int:
    """0 for `dev`, N for `gunicorn:N`."""
    if spec == "dev":
        return 0
    kind, _, n = spec.partition(":")
    if kind != "gunicorn" or not n.isdigit() or int(n) < 1:
        raise ValueError(f"--servers: {spec!r} is neither `dev` nor `gunicorn:N` (N worker processes, N >= 1)")
    return int(n)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of (b), (b'), (c) and (d)")
    ap.add_argument("--configs", nargs="+", default=["2x900"], help="full-pull settings WORKERSxCHUNK to compare")
    ap.add_argument(
        "--servers", nargs="+", default=["dev"], help="Label Studio servers to measure: dev and/or gunicorn:N"
    )
    ap.add_argument(
        "--memory-sizes", nargs="*", type=int, default=[2000], help="project sizes for the client memory runs"
    )
    ap.add_argument(
        "--memory-spec",
        default="2x500",
        help="WORKERSxCHUNK of the memory runs: one chunk size for every project size, so that what grows is "
        "what depends on the project size",
    )
    ap.add_argument("--skip-sdk", action="store_true", help="leave out (a), the slow paginated SDK list")
    ap.add_argument("--out", default="ingest", help="results file stem under bench/results/")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child()
    servers = {spec: _server_workers(spec) for spec in args.servers}
    versions = {"label_studio_bin": str(find_label_studio_bin())}
    if any(servers.values()):
        versions["gunicorn"] = gunicorn_version(ensure_gunicorn(find_label_studio_bin().parent))
    load_start = _load()
    scratch = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    data_dir = scratch / "labelstudio"
    rows: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    loads: dict[str, dict[str, list[float]]] = {}
    rounds_done = 0

    def measure_server(label: str, url: str, pgid: int) -> None:
        nonlocal rounds_done
        loads[label] = {"start": _load()}
        rows.extend(Bench(label, url, token, pgid, project_id, scratch).rounds(ids, args, rounds_done))
        loads[label]["end"] = _load()
        rounds_done += args.rounds

    # The dev server initializes the data dir (migrations, admin user, token) and seeds it; every server
    # measured afterwards serves the same database.
    with LocalLabelStudio(data_dir=data_dir) as dev:
        token = dev.token
        setup = bench_client(dev.url, token, RequestLog())
        project_id = ensure_project(setup, "ingest-bench", CATS).id
        t0 = time.perf_counter()
        ids = seed(setup, project_id, args.tasks)
        print(f"seeded {len(ids)} tasks in {time.perf_counter() - t0:.1f}s", flush=True)
        if "dev" in servers:
            assert dev._proc is not None  # started in its own session: its pid is its process group
            measure_server("dev", dev.url, dev._proc.pid)
        for size in args.memory_sizes:
            target = project_id if size == len(ids) else ensure_project(setup, f"ingest-bench-{size}", CATS).id
            if target != project_id:
                seed(setup, target, size)
            memory.append(
                {"project_tasks": size, "spec": args.memory_spec, **memory_at(dev.url, token, target, args.memory_spec)}
            )
    for workers in servers.values():
        if workers:
            with GunicornLabelStudio(data_dir=data_dir, token=token, workers=workers) as server:
                assert server.pid is not None
                measure_server(f"gunicorn-{workers}", server.url, server.pid)

    summary = {label: summarize(rows, label, args.configs) for label in loads}
    result = {
        "command": ".venv/bin/python bench/ingest_bench.py " + " ".join(sys.argv[1:]),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": _cpus()},
        "versions": versions,
        "load_average_1_5_15": {"start": load_start, "end": _load(), "per_server": loads},
        "rows": rows,
        "summary": summary,
        "client_memory": memory,
        "notes": "(b) only fetches and parses; (b'), full_pull and incremental also normalize to PairRecords and "
        "write the task store. Label Studio 1.23 with SQLite runs on the same 2 cores as the client (shared "
        "with other sessions). dev = `label-studio start` (Django runserver, one request's Python at a time); "
        "gunicorn-N = the same app, settings and database under gunicorn with N sync worker processes.",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.out}.md").write_text(markdown(result))
    print(json.dumps(summary, indent=2))
    return 0


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


if __name__ == "__main__":
    sys.exit(main())
