"""Benchmark: N generated PairRecords through every row check and dataset check.

Run:  .venv/bin/python bench/validation_bench.py            # 1,000,000 rows, writes bench/results/validation.{json,md}
      .venv/bin/python bench/validation_bench.py --rows 100000

Timed, in one process on the same frame:
  * `validate_records` end to end (pandera row checks + dataset checks + policies), the production path;
  * each rule alone (the vectorized functions pandera calls), so the slowest check is visible;
  * a plain-pandas peer: the same rules and dataset checks called directly, without pandera, to give the
    pandera/plain ratio.
Token length: tokenizing a million rows through the chat template is not part of the 1M figure; a
character proxy (chars / 4) feeds the token checks there, and the real tokenizer path
(`chat_token_counter`, the tiny model) is timed separately on a sample and reported as its own line.
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

os.environ.setdefault("DISABLE_PANDERA_IMPORT_WARNING", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from pipeline import dataset_checks as dc
from pipeline import text_checks as tc
from pipeline.config import PipelineConfig
from pipeline.near_duplicates import duplicate_groups
from pipeline.records import records_frame
from pipeline.split import split_groups
from pipeline.validate import validate_records

CATEGORIES = ("schedules", "tickets", "lost_property", "accessibility")
PLACES = [f"{a} {b}" for a in ("Port", "North", "South", "Old", "New", "Upper", "Lower", "East") for b in
          ("Alder", "Gull", "Kestrel", "Marrow", "Salt", "Inch", "Lantern", "Dun", "Heron", "Skerry")]  # fmt: skip
SUBJECTS = ["umbrella", "phone", "wallet", "backpack", "laptop", "passport", "bicycle", "car", "dog", "pram"]
VERBS = ["leave", "arrive", "board", "change", "refund", "collect", "book", "cancel"]
# (share of rows, how the flaw is made): each row check gets bad rows to find.
FLAWS: list[tuple[float, Callable[[str], str]]] = [
    (0.004, lambda r: r + " "),
    (0.004, lambda r: r.replace(" ", "  ", 1)),
    (0.003, lambda r: "<b>" + r),
    (0.003, lambda r: r + " {name}"),
    (0.002, lambda r: r.replace("e", "\u200b", 1)),
    (0.002, lambda r: r.replace("e", "Ã©", 1)),
    (0.002, lambda r: "   "),
]


def generate(n: int, seed: int) -> pd.DataFrame:
    """n PairRecords with realistic variety, ~2% flawed rows, ~0.5% exact and ~0.5% near-duplicate prompts."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(PLACES), n), rng.integers(0, len(PLACES), n)
    s, v = rng.integers(0, len(SUBJECTS), n), rng.integers(0, len(VERBS), n)
    num, hour = rng.integers(1, 10**6, n), rng.integers(5, 23, n)
    cat = rng.choice(len(CATEGORIES), n, p=[0.3, 0.3, 0.2, 0.2])
    prompts = [
        f"Can I {VERBS[v[i]]} my {SUBJECTS[s[i]]} on sailing {num[i]} from {PLACES[a[i]]} to {PLACES[b[i]]}?"
        for i in range(n)
    ]
    responses = [
        f"Yes. Sailing {num[i]} from {PLACES[a[i]]} leaves at {hour[i]}:15 and reaches {PLACES[b[i]]} about "
        f"{int(hour[i]) + 1}:05. Please {VERBS[v[i]]} at the desk; your {SUBJECTS[s[i]]} is welcome."
        for i in range(n)
    ]
    kind = rng.random(n)
    for i in np.flatnonzero(kind < 0.005):  # exact copies of an earlier prompt
        prompts[i] = prompts[int(i) // 2]
    for i in np.flatnonzero((kind >= 0.005) & (kind < 0.01)):  # near copies: one word added at the end
        prompts[i] = prompts[int(i) // 2][:-1] + " please?"
    start = 0.01
    for share, flaw in FLAWS:
        for i in np.flatnonzero((kind >= start) & (kind < start + share)):
            responses[i] = flaw(responses[i])
        start += share
    frame = pd.DataFrame(
        {
            "task_id": np.arange(1, n + 1),
            "annotation_id": np.arange(1, n + 1) + 10**7,
            "project_id": 1,
            "prompt": prompts,
            "response": responses,
            "category": np.asarray(CATEGORIES, dtype=object)[cat],
            "annotator": "1",
            "updated_at": pd.Timestamp("2026-01-01", tz="UTC"),
            "ground_truth": False,
            "system": None,
            "context": None,
        }
    )
    return records_frame(frame.to_dict("records")) if n <= 1000 else _as_records(frame)


def _as_records(frame: pd.DataFrame) -> pd.DataFrame:
    # records_frame's dtypes without a million dicts
    frame["annotation_id"] = frame["annotation_id"].astype("Int64")
    frame["updated_at"] = frame["updated_at"].astype("datetime64[us, UTC]")
    for col in ("prompt", "response", "category", "annotator", "system", "context"):
        frame[col] = frame[col].astype(object)
    return frame


def proxy_counter(records: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Token-count proxy for the 1M run: ~4 characters per token plus a fixed chat-template overhead."""
    p = tc.as_text(records["prompt"]).str.len().fillna(0)
    r = tc.as_text(records["response"]).str.len().fillna(0)
    return ((p + r) // 4 + 12).astype("Int64"), (r // 4 + 1).astype("Int64")


CPU_TIMES: dict[str, float] = {}


def timed(fn: Callable[[], Any], name: str | None = None) -> tuple[float, Any]:
    """Wall seconds (and, under `name`, CPU seconds of this process: what the run costs without other jobs)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    if name is not None:
        CPU_TIMES[name] = time.process_time() - c
    return time.perf_counter() - t, out


def plain_pandas(records: pd.DataFrame, previous: pd.DataFrame, config: PipelineConfig) -> dict[str, float]:
    """The same rules without pandera: each rule over both text columns, then the dataset checks."""
    v = config.validation
    times: dict[str, float] = {}
    t, text = timed(lambda: {c: tc.as_text(records[c]) for c in ("prompt", "response")})
    times["to Arrow strings"] = t
    rules: dict[str, Callable[[pd.Series], pd.Series]] = {
        "not_empty": tc.not_empty,
        "no_surrounding_whitespace": tc.no_surrounding_whitespace,
        "no_doubled_whitespace": tc.no_doubled_whitespace,
        "balanced_markup": tc.balanced_markup,
        "known_markup_tags": lambda s: tc.known_markup_tags(s, v.allowed_tags),
        "no_template_placeholder": tc.no_template_placeholder,
        "no_control_characters": tc.no_control_characters,
        "no_mojibake": tc.no_mojibake,
    }
    ok = pd.Series(True, index=records.index)
    for name, rule in rules.items():
        t, res = timed(lambda rule=rule: rule(text["prompt"]) & rule(text["response"]))
        times[name] = t
        ok &= res
    t, res = timed(lambda: tc.response_not_echo(records["prompt"], records["response"]))
    times["response_not_echo"], ok = t, ok & res
    t, (n_tok, n_resp) = timed(lambda: proxy_counter(records))
    times["token_count_proxy"] = t
    t, res = timed(lambda: (n_tok <= config.data.max_length) & (n_resp >= v.min_response_tokens))
    times["within_max_length+response_min_tokens"], ok = t, ok & res.fillna(True)
    t, res = timed(lambda: records["category"].isin(CATEGORIES))
    times["category_in_project_choices"], ok = t, ok & res
    kept = records[ok.to_numpy()]
    t, (exact, near) = timed(lambda: duplicate_groups(kept["prompt"], v.near_duplicate_threshold))
    times["duplicate_groups (exact + MinHash)"] = t
    t, _ = timed(lambda: dc.duplicate_checks(kept, exact, near, v))
    times["no_duplicate_prompts+no_near_duplicate_prompts"] = t
    t, _ = timed(lambda: (dc.size_check(kept, v), dc.balance_checks(kept, v)))
    times["min_dataset_size+category_balance"] = t
    t, is_eval = timed(lambda: split_groups(kept, config.data.eval_fraction, "ab" * 32, near))
    times["grouped split"] = t
    t, _ = timed(lambda: dc.leakage_check(is_eval, near, v))
    times["no_train_eval_leakage"] = t
    t, _ = timed(lambda: dc.drift_checks(kept, previous, v))
    times["drift (categories, lengths, vocabulary)"] = t
    return times


def tokenizer_rate(records: pd.DataFrame, model_dir: str | None) -> dict[str, Any] | None:
    """Rows/s of the real token counter (chat template + encode_pair) on a sample, when a tiny model is at hand."""
    if model_dir is None or not Path(model_dir, "config.json").is_file():
        return None
    from pipeline.modeling import load_tokenizer
    from pipeline.validate import chat_token_counter

    counter = chat_token_counter(load_tokenizer(model_dir))
    sample = records.head(2000)
    t, _ = timed(lambda: counter(sample))
    return {"model": model_dir, "rows": len(sample), "seconds": t, "rows_per_s": len(sample) / t}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--tiny-model", default="demo-output/tiny-model", help="for the tokenizer-path sample")
    args = ap.parse_args()
    config = PipelineConfig(validation={"min_rows": 50})

    t_gen, records = timed(lambda: generate(args.rows, seed=0))
    previous = generate(args.rows, seed=1)
    print(f"generated {args.rows} rows in {t_gen:.1f}s", flush=True)

    t_pandera, result = timed(
        lambda: validate_records(records, CATEGORIES, config, token_counter=proxy_counter, previous=previous),
        "validate_records",
    )
    print(f"validate_records (pandera + dataset checks): {t_pandera:.2f}s", flush=True)
    c0 = time.process_time()
    plain = plain_pandas(records, previous, config)
    CPU_TIMES["plain"] = time.process_time() - c0
    t_plain = sum(plain.values())
    print(f"plain pandas peer: {t_plain:.2f}s", flush=True)
    tok = tokenizer_rate(records, args.tiny_model)

    out: dict[str, Any] = {
        "command": "python bench/validation_bench.py --rows " + str(args.rows),
        "rows": args.rows,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
        "goal_s": 20.0,
        "validate_records_s": round(t_pandera, 3),
        "validate_records_cpu_s": round(CPU_TIMES["validate_records"], 3),
        "plain_pandas_s": round(t_plain, 3),
        "plain_pandas_cpu_s": round(CPU_TIMES["plain"], 3),
        "pandera_over_plain": round(t_pandera / t_plain, 3),
        "per_check_s": {k: round(v, 3) for k, v in sorted(plain.items(), key=lambda kv: -kv[1])},
        "rows_passed": len(result.valid),
        "rows_quarantined": int(result.quarantined["task_id"].nunique()),
        "rows_warned": int(result.warnings["task_id"].nunique()),
        "dataset_checks_failed": [d.name for d in result.dataset_checks if not d.passed],
        "token_length": "character proxy (chars/4 + 12) in the 1M run; real tokenizer timed separately below",
        "tokenizer_path_sample": tok,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "validation.json").write_text(json.dumps(out, indent=2) + "\n")
    md = [
        "# Validation benchmark",
        "",
        f"`{out['command']}` — {args.rows:,} generated rows, {os.cpu_count()} CPUs, "
        f"1-min load average at the end {out['machine']['load_avg_1m']:.1f} (other jobs share this machine).",
        "",
        "| what | wall s | CPU s (this process) |",
        "|---|---|---|",
        f"| `validate_records` end to end (pandera row checks + dataset checks + policies) | {t_pandera:.2f} | "
        f"{out['validate_records_cpu_s']:.2f} |",
        f"| plain-pandas peer (same rules, no pandera) | {t_plain:.2f} | {out['plain_pandas_cpu_s']:.2f} |",
        f"| ratio pandera / plain | {t_pandera / t_plain:.2f} | "
        f"{out['validate_records_cpu_s'] / out['plain_pandas_cpu_s']:.2f} |",
        "",
        f"Goal ≤ 20 s wall: {'met' if t_pandera <= 20 else 'NOT met'} under this load; CPU time is what the run "
        "costs a core when nothing else runs (the code is single-threaded). "
        f"Rows passed {out['rows_passed']:,}, "
        f"quarantined {out['rows_quarantined']:,}, warned {out['rows_warned']:,}.",
        "",
        "## Time per check (plain-pandas peer, wall seconds, slowest first)",
        "",
        "| check | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.3f} |" for k, v in out["per_check_s"].items()],
        "",
        "Token length in the 1M run uses a character proxy (chars/4 + 12), not the tokenizer.",
    ]
    if tok:
        md.append(
            f"The real path (`chat_token_counter`: chat template + `encode_pair`, tiny model) runs "
            f"{tok['rows_per_s']:,.0f} rows/s on a {tok['rows']}-row sample, i.e. about "
            f"{args.rows / tok['rows_per_s']:,.0f} s more for {args.rows:,} rows."
        )
    (args.out / "validation.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
