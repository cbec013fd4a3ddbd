"""Summary and Markdown report of bench/ingest_bench.py's measurements (medians, ratios, rounds won)."""

from __future__ import annotations

import statistics
from typing import Any


def _median(rows: list[dict[str, Any]], prefix: str, key: str = "wall_s") -> float:
    return round(statistics.median(r[key] for r in rows if r["method"].startswith(prefix)), 2)


def _rounds_won(rows: list[dict[str, Any]], spec: str, peer: str) -> str:
    by = {r["method"]: r["wall_s"] for r in rows}
    rounds = [m.rsplit(" ", 1)[1] for m in by if m.startswith(f"{peer} round")]
    won = sum(by[f"full_pull {spec} round {r}"] <= by[f"{peer} round {r}"] for r in rounds)
    return f"{won} of {len(rounds)}"


def summarize(all_rows: list[dict[str, Any]], server: str, configs: list[str]) -> dict[str, Any]:
    """Medians, ratios and rounds won of one server's rows."""
    rows = [r for r in all_rows if r["server"] == server]
    sync, sync_norm = _median(rows, "sync_export (b) "), _median(rows, "sync_export+normalize (b') ")
    full = {spec: _median(rows, f"full_pull {spec} ") for spec in configs}
    best = min(full, key=lambda s: full[s])
    incremental = _median(rows, "incremental 1%")
    ours = [r for r in rows if r["method"].startswith(("full_pull", "incremental"))]
    out: dict[str, Any] = {
        "median_sync_export_s": sync,
        "median_sync_export_normalized_s": sync_norm,
        "median_full_pull_s": full,
        "best_full_pull": best,
        "full_vs_sync_export_speedup": round(sync / full[best], 2),
        "full_faster_than_sync_in_rounds": _rounds_won(rows, best, "sync_export (b)"),
        "full_vs_sync_export_normalized_speedup": round(sync_norm / full[best], 2),
        "full_faster_than_sync_normalized_in_rounds": _rounds_won(rows, best, "sync_export+normalize (b')"),
        "median_incremental_s": incremental,
        "incremental_share_of_full": round(incremental / full[best], 3),
        "slowest_request_of_our_pulls_s": max(r["slowest_request_s"] for r in ours),
        "slowest_request_of_sync_export_s": max(r["slowest_request_s"] for r in rows if "sync_export" in r["method"]),
        "median_server_cpu_s": {
            "sync_export (b)": _median(rows, "sync_export (b) ", "server_cpu_s"),
            f"full_pull {best}": _median(rows, f"full_pull {best} ", "server_cpu_s"),
        },
        "median_client_cpu_s": {
            "sync_export (b)": _median(rows, "sync_export (b) ", "client_cpu_s"),
            "sync_export+normalize (b')": _median(rows, "sync_export+normalize (b') ", "client_cpu_s"),
            f"full_pull {best}": _median(rows, f"full_pull {best} ", "client_cpu_s"),
        },
    }
    if any(r["method"].startswith("sdk_paginated") for r in rows):
        sdk = _median(rows, "sdk_paginated")
        out["sdk_paginated_s"] = sdk
        out["full_vs_sdk_paginated_speedup"] = round(sdk / full[best], 2)
    return out


def markdown(result: dict[str, Any]) -> str:
    """bench/results/<out>.md from the results JSON."""
    load = result["load_average_1_5_15"]
    md = ["# Label Studio pull benchmark", "", f"`{result['command']}`", "", result["notes"], ""]
    md += [f"Versions: {result['versions']}. Load average (1, 5, 15 min) at start {load['start']}, at end "]
    md[-1] += f"{load['end']} ({result['machine']['cpus']} cores)."
    md += ["", "## Summary (medians)", ""]
    md += [
        "| server | (a) SDK list s | (b) sync export s | (b') export + normalize s | best full pull | full pull s | "
        "× (a) | × (b) | rounds won vs (b) | × (b') | rounds won vs (b') | slowest request ours / (b) s | "
        "incremental 1% s (share) | load avg start → end |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for server, s in result["summary"].items():
        best, per = s["best_full_pull"], load["per_server"][server]
        md.append(
            f"| {server} | {s.get('sdk_paginated_s', '-')} | {s['median_sync_export_s']} | "
            f"{s['median_sync_export_normalized_s']} | {best} | {s['median_full_pull_s'][best]} | "
            f"{s.get('full_vs_sdk_paginated_speedup', '-')} | {s['full_vs_sync_export_speedup']} | "
            f"{s['full_faster_than_sync_in_rounds']} | {s['full_vs_sync_export_normalized_speedup']} | "
            f"{s['full_faster_than_sync_normalized_in_rounds']} | {s['slowest_request_of_our_pulls_s']} / "
            f"{s['slowest_request_of_sync_export_s']} | {s['median_incremental_s']} "
            f"({s['incremental_share_of_full']:.1%}) | {per['start'][0]} → {per['end'][0]} |"
        )
    md += ["", "## Every measurement", ""]
    md += [
        "| server | method | tasks | wall s | tasks/s | requests | slowest request s | largest response MB | "
        "longest request line B | client CPU s | server CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['server']} | {r['method']} | {r['tasks']} | {r['wall_s']} | {r['tasks_per_s']} | {r['requests']} | "
        f"{r['slowest_request_s']} | {r['largest_response_mb']} | {r['longest_request_line_bytes']} | "
        f"{r['client_cpu_s']} | {r['server_cpu_s']} |"
        for r in result["rows"]
    ]
    for server, s in result["summary"].items():
        md += ["", f"Summary, {server}:", "", *[f"- {k}: {v}" for k, v in s.items()]]
    md += ["", "## Client memory of a full pull (tracemalloc, fresh process)", ""]
    md += [
        "| project tasks | WORKERSxCHUNK | peak MB | result MB (PairRecords frames) | working MB (peak - result) |",
        "|---|---|---|---|---|",
    ]
    md += [
        f"| {m['project_tasks']} | {m['spec']} | {m['peak_mb']} | {m['result_mb']} | {m['working_mb']} |"
        for m in result["client_memory"]
    ]
    return "\n".join(md) + "\n"
