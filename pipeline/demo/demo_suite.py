"""The world's general suite: held-out samples of a world base's own world, for the forgetting check.

The built-in suite (pipeline/evaluate/general_suite/) is hand-written English that the demo base could only
know by heart, and memorised text degrades under any weight change (bench/results/demo_learning.md). This
suite is drawn from the world a `DemoBaseSettings(corpus="world")` base learned (pipeline/demo/general_world.py)
and held out of its corpus:
- perplexity.jsonl: `SUITE_TEXTS` paragraphs of the corpus's generator with another seed; none is a corpus
  text (pipeline/demo/world_corpus.py drops any that the corpus seed also drew);
- multiple_choice.jsonl: every fact of the world asked in three wordings the corpus never uses
  (`Relation.suite_ask`), with other values of the same relation as the wrong choices; the three items of a
  fact share a `group`, so the forgetting check's bootstrap resamples facts, not wordings. Measured on the
  demo's adapters (bench/results/demo_learning.md): one wording per fact left a bootstrap standard error of
  1.6-2.1 accuracy points (261 items; about 20 flip either way on near-ties); three wordings 1.2-1.4.

The files ship in pipeline/demo/general_suite/ (a config uses them with `eval.general_suite` set to that
directory); tests/test_demo_suite.py checks that they are what this module generates and that they stay held out.
Regenerate with `python -m pipeline.demo.demo_suite`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.demo.general_world import paragraphs, suite_mc_items

SUITE_DIR = Path(__file__).resolve().parent / "general_suite"
SUITE_TEXTS = 120
SUITE_SEED = 1_000  # the corpus uses seed 0
MC_SEED = 1_001


def _held_out() -> dict[str, str]:
    """The perplexity texts, distinct and in a fixed order, each with its kind (the first drawn)."""
    seen: dict[str, str] = {}
    for kind, text in paragraphs(SUITE_TEXTS, SUITE_SEED):
        seen.setdefault(text, kind)
    return seen


def suite_texts() -> list[str]:
    """The perplexity texts (distinct, in a fixed order)."""
    return list(_held_out())


def suite_files() -> dict[str, str]:
    """The suite's files (name -> content), as the general-suite loader reads them."""
    held_out = _held_out()
    ppl = [{"id": f"ppl-{i:03d}", "domain": kind, "text": text} for i, (text, kind) in enumerate(held_out.items(), 1)]
    mc = [{"id": f"mc-{i:03d}", **item} for i, item in enumerate(suite_mc_items(MC_SEED), 1)]
    return {
        "perplexity.jsonl": "".join(json.dumps(r) + "\n" for r in ppl),
        "multiple_choice.jsonl": "".join(json.dumps(r) + "\n" for r in mc),
    }


def write_suite(directory: Path = SUITE_DIR) -> Path:
    """Write the suite's files into `directory` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in suite_files().items():
        (directory / name).write_text(content)
    return directory


if __name__ == "__main__":
    print(write_suite())
