"""Tokenize once: `Dataset.map` tokenization of accepted rows, its Arrow cache, and the loader's memory.

Measured in one run, each figure next to its peer:
- tokenize N rows through `pipeline.train.tokenized.tokenize_cached` (cold cache), rows/s, with 1 and
  with `num_proc=2` worker processes;
- the same call again (warm cache): speed-up over the cold run (goal >=20x);
- the loader's peak RSS above a fresh interpreter's baseline at a small and at the full row count,
  each in its own process from a warm cache (goal: <=1.2x growth from 100k to 1M rows).

    python bench/dataset_bench.py --rows 1000000 --small-rows 100000

The tokenizer is the project's offline byte-level BPE (`build_tokenizer`) with the tiny model's chat
template; rows are the packaged sample pairs repeated with distinct task ids. Results:
bench/results/dataset.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.demo.sample_data import sample_records  # noqa: E402
from pipeline.demo.tiny_model import build_tokenizer  # noqa: E402
from pipeline.train.tokenized import tokenize_cached  # noqa: E402


def make_rows(n: int) -> pd.DataFrame:
    base = sample_records(200, seed=0)
    reps = -(-n // len(base))
    frame = pd.concat([base] * reps, ignore_index=True).iloc[:n].copy()
    frame["task_id"] = range(1, n + 1)
    # distinct text per row, so nothing is shared by accident
    frame["prompt"] = frame["prompt"] + " #" + frame["task_id"].astype(str)
    return frame


def tokenizer_dir(work: Path) -> Path:
    out = work / "tokenizer"
    if not (out / "tokenizer.json").is_file():
        corpus = make_rows(2000)
        tok = build_tokenizer((corpus["prompt"] + " " + corpus["response"]).tolist())
        tok.save_pretrained(out)
    return out


def _timed(tok_dir: Path, rows: int, cache: Path, num_proc: int) -> dict[str, float]:
    from pipeline.chat_format import load_tokenizer

    tok = load_tokenizer(str(tok_dir))
    frame = make_rows(rows)
    t0 = time.perf_counter()
    examples = tokenize_cached(tok, frame, 512, cache_dir=cache, num_proc=num_proc)
    dt = time.perf_counter() - t0
    return {"rows": rows, "seconds": dt, "rows_per_s": rows / dt, "examples": len(examples)}


def _loader_rss(tok_dir: Path, rows: int, cache: Path) -> dict[str, float]:
    """Resident memory of a fresh process, above its post-import baseline, that builds the rows frame (what the
    recipe is handed) and loads the examples from a warm cache."""
    code = (
        "import sys, json\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from bench.dataset_bench import make_rows\n"
        "from pipeline.chat_format import load_tokenizer\n"
        "from pipeline.train.tokenized import tokenize_cached\n"
        "def rss():\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])\n"
        "tok = load_tokenizer(sys.argv[1])\n"
        "base = rss()\n"
        "frame = make_rows(int(sys.argv[2]))\n"
        "ex = tokenize_cached(tok, frame, 512, cache_dir=sys.argv[3])\n"
        "tokens = sum(len(ex[i].input_ids) for i in range(0, len(ex), 97))  # read rows as training does\n"
        "print(json.dumps({'rows': len(ex), 'baseline_kib': base, 'peak_kib': rss()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tok_dir), str(rows), str(cache)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["loader_mib"] = (r["peak_kib"] - r["baseline_kib"]) / 1024
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--small-rows", type=int, default=100_000)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="dataset-bench-") as tmp:
        work = Path(tmp)
        tok_dir = tokenizer_dir(work)
        cold1 = _timed(tok_dir, args.rows, work / "cache1", 1)
        warm = _timed(tok_dir, args.rows, work / "cache1", 1)
        cold2 = _timed(tok_dir, args.rows, work / "cache2", 2)
        _timed(tok_dir, args.small_rows, work / "cache1", 1)  # warm the small cache
        small = _loader_rss(tok_dir, args.small_rows, work / "cache1")
        large = _loader_rss(tok_dir, args.rows, work / "cache1")
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()[0]},
        "tokenize_cold_1proc": cold1,
        "tokenize_cold_2proc": cold2,
        "from_cache": warm,
        "cache_speedup": cold1["seconds"] / warm["seconds"],
        "num_proc2_speedup": cold1["seconds"] / cold2["seconds"],
        "loader_small": small,
        "loader_large": large,
        "loader_growth": large["loader_mib"] / max(small["loader_mib"], 1e-9),
        "self_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dataset.json").write_text(json.dumps(result, indent=2))
    md = [
        "# Tokenize once: Dataset.map + Arrow cache",
        "",
        f"`python bench/dataset_bench.py --rows {args.rows} --small-rows {args.small_rows}` "
        f"({result['machine']['cpus']} CPUs, load {result['machine']['load']:.1f})",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| tokenize {args.rows:,} rows, 1 process | {cold1['seconds']:.1f} s ({cold1['rows_per_s']:,.0f} rows/s) |",
        f"| tokenize, num_proc=2 | {cold2['seconds']:.1f} s ({cold2['rows_per_s']:,.0f} rows/s, "
        f"{result['num_proc2_speedup']:.2f}x) |",
        f"| second run, from the cache | {warm['seconds']:.1f} s (**{result['cache_speedup']:.1f}x** faster; goal >=20x) |",
        f"| loader RSS above baseline, {args.small_rows:,} rows | {small['loader_mib']:.0f} MiB |",
        f"| loader RSS above baseline, {args.rows:,} rows | {large['loader_mib']:.0f} MiB "
        f"(**{result['loader_growth']:.1f}x** growth; goal <=1.2x) |",
        "",
    ]
    (args.out / "dataset.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
