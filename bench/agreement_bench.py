"""Benchmark: inter-annotator agreement on N generated tasks x 3 annotators (default 100,000 tasks).

Run:  .venv/bin/python bench/agreement_bench.py                  # writes bench/results/agreement.{json,md}
      .venv/bin/python bench/agreement_bench.py --tasks 20000 --flip 0.2

Data: 12 annotators, 3 distinct ones per task, 4 categories. Each annotator keeps the task's true category
or, with probability --flip, picks another one (controlled category disagreement); each writes the task's
base response with one or two words changed or, with probability --rewrite, a response of their own. One
annotation per task is the winner; ~3% of rows are quarantined by one of three checks.

Timed in one process on the same frame:
  * `agreement_report(frame, n_boot=1000)` end to end, the goal (<= 5 s wall), best and median of --repeats;
  * its steps alone (frame check, category table + bootstrap, pairwise Cohen, response ROUGE-L, annotators,
    disagreements), so the slowest is visible;
  * peers: a per-task Python loop for Fleiss' kappa on a --peer-tasks subset (scaled to all tasks); the
    textbook bootstrap (redraw task indices, recount, recompute) for --peer-boots resamples (scaled to
    n_boot); and `rouge_score`'s ROUGE-L (Google's package, lowercasing tokenizer) on --peer-pairs pairs
    (scaled to all pairs). The subsets also check that the figures agree with ours.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from pipeline.validate import agreement as ag
from pipeline.validate.agreement import annotators, category, responses
from pipeline.validate.agreement import frame as agreement_frame

CATEGORIES = ("schedules", "tickets", "lost_property", "accessibility")
ANNOTATORS = tuple(f"annotator{i:02d}@example.org" for i in range(12))
PLACES = ("Port Alder", "North Gull", "South Kestrel", "Old Marrow", "New Salt", "Upper Inch", "Lower Lantern")
SUBJECTS = ("umbrella", "phone", "wallet", "backpack", "laptop", "passport", "bicycle", "pram")
VERBS = ("leave", "arrive", "board", "change", "refund", "collect", "book", "cancel")
SWAPS = ("please", "kindly", "simply", "today", "soon", "first", "then", "also")
CHECKS = ("no_doubled_whitespace", "within_max_length", "category_in_project_choices")
RESULTS = Path(__file__).resolve().parent / "results"


def _response(rng: np.random.Generator, n: int) -> list[str]:
    """n ferry-desk answers of 25-40 words with varied fills."""
    a, b = rng.integers(0, len(PLACES), n), rng.integers(0, len(PLACES), n)
    s, v = rng.integers(0, len(SUBJECTS), n), rng.integers(0, len(VERBS), n)
    num, hour = rng.integers(1, 10**5, n), rng.integers(5, 22, n)
    return [
        f"Yes. Sailing {num[i]} from {PLACES[a[i]]} leaves at {hour[i]}:15 and reaches {PLACES[b[i]]} about "
        f"{hour[i] + 1}:05. Please {VERBS[v[i]]} at the desk on deck two; your {SUBJECTS[s[i]]} is welcome on "
        f"board if it fits under the seat, and staff will help you {VERBS[v[i]]} on arrival."
        for i in range(n)
    ]


def generate(n_tasks: int, flip: float, rewrite: float, seed: int) -> pd.DataFrame:
    """The long annotation frame: 3 rows per task (see the module docstring)."""
    rng = np.random.default_rng(seed)
    who = np.argsort(rng.random((n_tasks, len(ANNOTATORS))), axis=1)[:, :3]
    truth = rng.choice(len(CATEGORIES), n_tasks, p=[0.35, 0.3, 0.2, 0.15])
    rows = n_tasks * 3
    task = np.repeat(np.arange(1, n_tasks + 1), 3)
    cat = np.repeat(truth, 3)
    flipped = rng.random(rows) < flip
    cat[flipped] = (cat[flipped] + rng.integers(1, len(CATEGORIES), flipped.sum())) % len(CATEGORIES)
    base = np.repeat(np.asarray(_response(rng, n_tasks), dtype=object), 3)
    own = rng.random(rows) < rewrite
    responses = base.copy()
    responses[own] = _response(rng, int(own.sum()))
    edit = np.flatnonzero(~own)
    swap, second = rng.integers(0, len(SWAPS), len(edit)), rng.random(len(edit)) < 0.5
    for k, i in enumerate(edit):  # one or two words changed
        text = responses[i].replace("Please", SWAPS[swap[k]].capitalize(), 1)
        responses[i] = text.replace("staff", "crew", 1) if second[k] else text
    winner = np.zeros(rows, bool)
    winner[np.arange(n_tasks) * 3 + rng.integers(0, 3, n_tasks)] = True
    failed = np.where(rng.random(rows) < 0.03, np.asarray(CHECKS, dtype=object)[rng.integers(0, 3, rows)], None)
    return pd.DataFrame(
        {
            "task_id": task,
            "annotator": np.asarray(ANNOTATORS, dtype=object)[who.ravel()],
            "category": np.asarray(CATEGORIES, dtype=object)[cat],
            "response": responses,
            "winner": winner,
            "quarantined": failed != None,  # noqa: E711 (elementwise on an object array)
            "failed_check": failed,
        }
    )


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def naive_fleiss(frame: pd.DataFrame) -> float:
    """Fleiss' kappa the straightforward way: a dict per task, a Python loop over tasks and categories."""
    labels: dict[int, list[str]] = {}
    for t, c in zip(frame["task_id"], frame["category"], strict=True):
        if c is not None:
            labels.setdefault(int(t), []).append(c)
    cats = sorted({c for v in labels.values() for c in v})
    p_sum, totals, n_tasks = 0.0, dict.fromkeys(cats, 0), 0
    for v in labels.values():
        m = len(v)
        if m < 2:
            continue
        n_tasks += 1
        counts = {c: v.count(c) for c in cats}
        p_sum += sum(n * (n - 1) for n in counts.values()) / (m * (m - 1))
        for c in cats:
            totals[c] += counts[c]
    n = sum(totals.values())
    p_e = sum((x / n) ** 2 for x in totals.values())
    return (p_sum / n_tasks - p_e) / (1 - p_e)


def naive_bootstrap(table: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """The textbook task bootstrap: redraw task indices, recompute Fleiss' kappa and alpha per resample."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, 2))
    for b in range(n_boot):
        sample = table[rng.integers(0, len(table), len(table))]
        out[b] = ag.fleiss_kappa(sample), ag.krippendorff_alpha(sample)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--flip", type=float, default=0.1, help="chance an annotator picks another category")
    ap.add_argument("--rewrite", type=float, default=0.1, help="chance an annotator writes their own response")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peer-tasks", type=int, default=10_000)
    ap.add_argument("--peer-boots", type=int, default=20)
    ap.add_argument("--peer-pairs", type=int, default=3_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    command = "python bench/agreement_bench.py " + " ".join(sys.argv[1:])
    load_start = os.getloadavg()[0]

    t_gen, _, frame = timed(lambda: generate(args.tasks, args.flip, args.rewrite, args.seed))
    print(f"generated {len(frame):,} annotations on {args.tasks:,} tasks in {t_gen:.1f} s", flush=True)

    runs = [timed(lambda: ag.agreement_report(frame, n_boot=args.n_boot, seed=args.seed)) for _ in range(args.repeats)]
    report = runs[-1][2]
    walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
    print(f"agreement_report: wall {[round(w, 2) for w in walls]} s, CPU {[round(c, 2) for c in cpus]} s", flush=True)

    # worst case for ROUGE-L: no annotator starts from a shared draft, so no common prefix/suffix to skip
    own = generate(args.tasks, args.flip, 1.0, args.seed + 1)
    w_wall, w_cpu, _ = timed(lambda: ag.agreement_report(own, n_boot=args.n_boot, seed=args.seed))
    print(f"agreement_report, every response the annotator's own: wall {w_wall:.2f} s, CPU {w_cpu:.2f} s", flush=True)

    # each step alone, on the same frame
    steps: dict[str, float] = {}
    t, _, checked = timed(lambda: ag.check_frame(frame))
    steps["check_frame"] = t
    t, _, coded = timed(lambda: agreement_frame._code(checked))
    steps["factorize task/annotator/category"] = t
    t, _, table = timed(lambda: category._category_table(coded))
    steps["category table"] = t
    t, _, _ = timed(lambda: ag.bootstrap_agreement(table, n_boot=args.n_boot, seed=args.seed))
    steps[f"Fleiss + alpha + bootstrap ({args.n_boot} resamples)"] = t
    t, _, _ = timed(lambda: category._pairwise_cohen(coded, 10))
    steps["pairwise Cohen's kappa"] = t
    t, _, pairs = timed(lambda: responses._response_pairs(coded))
    steps[f"response ROUGE-L ({len(pairs):,} pairs)"] = t
    t, _, sim = timed(lambda: responses._task_similarity(pairs))
    steps["per-task mean ROUGE-L"] = t
    t, _, _ = timed(lambda: annotators._annotator_stats(coded, pairs))
    steps["annotator stats"] = t
    t, _, _ = timed(lambda: ag.quarantine_by_check(checked))
    steps["quarantine by check"] = t
    t, _, _ = timed(lambda: annotators._disagreements(coded, sim, 0.5))
    steps["disagreements"] = t

    # peers
    sub = frame[frame["task_id"] <= args.peer_tasks]
    scale_tasks = args.tasks / max(sub["task_id"].nunique(), 1)
    t_naive, _, naive_k = timed(lambda: naive_fleiss(sub))
    ours_sub = ag.fleiss_kappa(ag.category_table(sub))
    counts = table.to_numpy()
    t_nboot, _, _ = timed(lambda: naive_bootstrap(counts, args.peer_boots, args.seed))
    t_boot = steps[f"Fleiss + alpha + bootstrap ({args.n_boot} resamples)"]
    peer_pairs = pairs.head(args.peer_pairs)
    texts = frame.set_index(["task_id", "annotator"])["response"]
    ta = texts.loc[list(zip(peer_pairs["task_id"], peer_pairs["annotator_a"], strict=True))].tolist()
    tb = texts.loc[list(zip(peer_pairs["task_id"], peer_pairs["annotator_b"], strict=True))].tolist()
    peer_rouge: dict[str, Any] = {}
    try:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"])
        t_rs, _, rs = timed(lambda: [scorer.score(x, y)["rougeL"].fmeasure for x, y in zip(ta, tb, strict=True)])
        peer_rouge = {
            "pairs": len(ta),
            "seconds": t_rs,
            "scaled_to_all_pairs_s": t_rs * len(pairs) / max(len(ta), 1),
            "max_abs_diff_vs_ours": float(np.max(np.abs(np.asarray(rs) - peer_pairs["rouge_l"].to_numpy()))),
        }
    except ImportError:
        peer_rouge = {"skipped": "rouge_score is not installed"}
    ours_rouge = ag.rouge_l_f1_batch(ta, tb)
    exact = [
        2 * ag.lcs_length(x.split(), y.split()) / (len(x.split()) + len(y.split())) for x, y in zip(ta, tb, strict=True)
    ]

    m = report.metrics()
    result: dict[str, Any] = {
        "command": command,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_1min_start": round(load_start, 2),
            "load_1min_end": round(os.getloadavg()[0], 2),
        },
        "data": {
            "tasks": args.tasks,
            "annotations": len(frame),
            "annotators": len(ANNOTATORS),
            "flip": args.flip,
            "rewrite": args.rewrite,
            "tasks_with_category_disagreement": int(report.disagreements["category_differs"].sum()),
            "response_pairs": len(pairs),
        },
        "agreement_report": {
            "n_boot": args.n_boot,
            "wall_s": walls,
            "cpu_s": cpus,
            "best_wall_s": min(walls),
            "median_wall_s": float(np.median(walls)),
            "goal_s": 5.0,
            "goal_met": bool(np.median(walls) <= 5.0),
            "all_own_responses_wall_s": w_wall,
            "all_own_responses_cpu_s": w_cpu,
        },
        "steps_wall_s": steps,
        "peers": {
            "fleiss_python_loop": {
                "tasks": int(sub["task_id"].nunique()),
                "seconds": t_naive,
                "scaled_to_all_tasks_s": t_naive * scale_tasks,
                "abs_diff_vs_ours": abs(naive_k - ours_sub),
            },
            "textbook_bootstrap": {
                "resamples": args.peer_boots,
                "seconds": t_nboot,
                "scaled_to_n_boot_s": t_nboot * args.n_boot / args.peer_boots,
                "ours_s": t_boot,
            },
            "rouge_score_rougeL": peer_rouge,
            "ours_rouge_matches_python_lcs": bool(np.allclose(ours_rouge, exact, atol=1e-12)),
        },
        "metrics": m,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "agreement.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "agreement.md").write_text(markdown(result))
    print(json.dumps(result["agreement_report"], indent=2))
    print(json.dumps(result["peers"], indent=2))


def markdown(r: dict[str, Any]) -> str:
    """The results as a short Markdown page."""
    a, d, p, mach = r["agreement_report"], r["data"], r["peers"], r["machine"]
    m = {k.removeprefix("data/agreement/"): v for k, v in r["metrics"].items()}
    lines = [
        "# Inter-annotator agreement benchmark",
        "",
        f"`{r['command'].strip()}` — {d['tasks']:,} tasks x 3 annotators ({d['annotations']:,} annotations, "
        f"{d['annotators']} annotators, category flip {d['flip']}, own response {d['rewrite']}), "
        f"{mach['cpus']} CPUs, 1-min load average {mach['load_1min_start']} at the start, "
        f"{mach['load_1min_end']} at the end (other jobs share this machine).",
        "",
        "| what | wall s | CPU s (this process) |",
        "|---|---|---|",
    ]
    for i, (w, c) in enumerate(zip(a["wall_s"], a["cpu_s"], strict=True)):
        lines.append(f"| `agreement_report(n_boot={a['n_boot']})` run {i + 1} | {w:.2f} | {c:.2f} |")
    lines.append(
        f"| same, but every response the annotator's own (`--rewrite 1.0`: no shared draft) | "
        f"{a['all_own_responses_wall_s']:.2f} | {a['all_own_responses_cpu_s']:.2f} |"
    )
    lines += [
        "",
        f"Goal <= {a['goal_s']:.0f} s wall for the whole report: {'met' if a['goal_met'] else 'NOT met'} "
        f"(median {a['median_wall_s']:.2f} s, best {a['best_wall_s']:.2f} s). The code is single-threaded; "
        "CPU time is what a run costs a core when nothing else runs.",
        "",
        "## Steps alone (wall seconds)",
        "",
        "| step | seconds |",
        "|---|---|",
        *(f"| {k} | {v:.3f} |" for k, v in r["steps_wall_s"].items()),
        "",
        "## Peers (same process, same data)",
        "",
        "| peer | measured | scaled | ours |",
        "|---|---|---|---|",
    ]
    f = p["fleiss_python_loop"]
    lines.append(
        f"| Fleiss' kappa, per-task Python loop ({f['tasks']:,} tasks) | {f['seconds']:.3f} s | "
        f"{f['scaled_to_all_tasks_s']:.2f} s for all tasks, no interval | whole report above; same kappa "
        f"(diff {f['abs_diff_vs_ours']:.1e}) |"
    )
    b = p["textbook_bootstrap"]
    lines.append(
        f"| textbook bootstrap, Fleiss + alpha ({b['resamples']} resamples) | {b['seconds']:.2f} s | "
        f"{b['scaled_to_n_boot_s']:.1f} s for {a['n_boot']} | {b['ours_s']:.3f} s for {a['n_boot']} |"
    )
    rs = p["rouge_score_rougeL"]
    if "seconds" in rs:
        step = next(v for k, v in r["steps_wall_s"].items() if k.startswith("response ROUGE-L"))
        lines.append(
            f"| `rouge_score` ROUGE-L ({rs['pairs']:,} pairs) | {rs['seconds']:.2f} s | "
            f"{rs['scaled_to_all_pairs_s']:.1f} s for {d['response_pairs']:,} pairs | {step:.2f} s |"
        )
    lines += [
        "",
        "`rouge_score` lowercases and drops punctuation before ROUGE-L; here tokens are whitespace-split as is, "
        f"so figures differ slightly (max |diff| {rs.get('max_abs_diff_vs_ours', float('nan')):.3f} on the subset). "
        f"Our vectorized LCS equals the pure-Python LCS on the subset: {p['ours_rouge_matches_python_lcs']}.",
        "",
        "## Figures on the generated data",
        "",
        f"Fleiss' kappa {m['category_fleiss_kappa']:.4f} [{m['category_fleiss_kappa_ci_low']:.4f}, "
        f"{m['category_fleiss_kappa_ci_high']:.4f}], Krippendorff's alpha {m['category_krippendorff_alpha']:.4f} "
        f"[{m['category_krippendorff_alpha_ci_low']:.4f}, {m['category_krippendorff_alpha_ci_high']:.4f}], "
        f"Light's kappa {m['category_cohen_kappa_mean']:.4f}, response ROUGE-L mean {m['response_rouge_l_mean']:.4f}; "
        f"{d['tasks_with_category_disagreement']:,} tasks with differing categories, "
        f"{int(m['disagreement_tasks']):,} tasks in disagreement.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
