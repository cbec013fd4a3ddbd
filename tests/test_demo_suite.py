"""The world's general suite is held out of the world corpus and shipped as generated.

The forgetting check means something only if the base did not read the suite: its perplexity texts must not
be corpus texts, its questions' wordings must not occur in the corpus (the base learned the facts from other
sentences), and replay must have nothing of it to drop. The shipped files must be what
pipeline/demo/demo_suite.py generates, so that a changed world regenerates them.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import load_config
from pipeline.demo import sample_data
from pipeline.demo.claims import chance_accuracy
from pipeline.demo.demo_base import (
    CORPUS_FILE,
    MARKER,
    REPLAY_FILE,
    REPLAY_PARAGRAPHS,
    WORLD_DOC_PARAGRAPHS,
    DemoBaseSettings,
    build_demo_base,
)
from pipeline.demo.demo_suite import SUITE_DIR, suite_files
from pipeline.demo.general_world import relations
from pipeline.demo.replay_questions import LINES_PER_TEXT, REPLAY_ASK, replay_quiz_lines
from pipeline.demo.world_corpus import world_dialogues, world_texts
from pipeline.evaluate.general_suite import load_general_suite
from pipeline.train.replay import corpus_jsonl, exclude_suite, read_texts, suite_texts


def test_shipped_suite_is_the_generated_one() -> None:
    for name, content in suite_files().items():
        assert (SUITE_DIR / name).read_text() == content, f"regenerate: python -m pipeline.demo.demo_suite ({name})"


def test_suite_loads_with_enough_items() -> None:
    suite = load_general_suite(SUITE_DIR)
    assert len(suite.texts) >= 100
    assert len(suite.mc_items) >= 200
    assert len({m.domain for m in suite.mc_items}) >= 10


def test_suite_is_held_out_of_the_corpus() -> None:
    suite = load_general_suite(SUITE_DIR)
    texts = world_texts()
    corpus = "\n".join([*texts, *(t for qa in world_dialogues() for t in qa)])
    assert [t for t in suite.texts if t in corpus] == []
    assert [m.question for m in suite.mc_items if m.question in corpus] == []
    # Replay draws from the base's corpus: by construction it holds nothing the rule would have to drop.
    kept, dropped = exclude_suite(list(texts), suite_texts(SUITE_DIR))
    assert dropped == 0 and len(kept) == len(texts)


def test_every_fact_the_suite_asks_is_stated_in_the_corpus() -> None:
    """Each multiple-choice item asks one fact of the world; the corpus states every fact (subject and value in
    one paragraph) in other words than the suite's question."""
    paragraphs = world_texts()
    missing = [
        (rel.name, s, v) for rel in relations() for s, v in rel.facts if not any(s in p and v in p for p in paragraphs)
    ]
    assert missing == []


def test_every_fact_is_asked_in_three_wordings_that_share_a_group() -> None:
    """Three suite wordings per relation, none the corpus's; a fact's items form one group (the bootstrap's unit)."""
    items = load_general_suite(SUITE_DIR).mc_items
    assert len(items) == sum(len(rel.facts) * len(rel.suite_ask) for rel in relations())
    for rel in relations():
        assert len(set(rel.suite_ask)) == 3 and not set(rel.suite_ask) & set(rel.ask), rel.name
    groups: dict[str, list[str]] = {}
    for m in items:
        groups.setdefault(m.group, []).append(m.question)
    assert len(groups) == sum(len(rel.facts) for rel in relations())
    assert all(len(set(qs)) == 3 for qs in groups.values())


def test_suite_holds_no_ferry_desk_data() -> None:
    files = "\n".join(suite_files().values()).lower()
    names = list(sample_data.PORTS) + list(sample_data.VESSELS) + ["Brightwater", "01632 9604", "ferr"]
    assert [n for n in names if n.lower() in files] == []


def test_world_corpus_holds_no_ferry_desk_data() -> None:
    corpus = "\n".join([*world_texts(), *(t for qa in world_dialogues() for t in qa)]).lower()
    names = list(sample_data.PORTS) + list(sample_data.VESSELS) + ["Brightwater", "01632 9604", "ferr"]
    assert [n for n in names if n.lower() in corpus] == []


def test_a_config_can_name_the_suite() -> None:
    cfg = load_config(None, eval={"general_suite": str(SUITE_DIR)})
    assert cfg.eval.general_suite == str(SUITE_DIR)
    assert 0.25 < chance_accuracy(cfg.eval.general_suite) < 0.35  # three or four choices per item


def test_world_settings_leave_the_demo_base_name_alone() -> None:
    """The earlier demo base keeps its cache name: the world knobs enter the hash only for a world base."""
    demo = DemoBaseSettings(corpus="demo")
    assert demo.digest() == DemoBaseSettings(corpus="demo", world_paragraphs=5, dialogue_repeats=9).digest()
    assert DemoBaseSettings(corpus="world").digest() != demo.digest()


def test_a_world_base_builds_and_ships_its_replay_file(tmp_path: Path) -> None:
    """The world path end to end on a few steps: the base loads, its corpus file holds the world's paragraphs
    four to a line and its replay file two to a line with general questions, none of them a suite text."""
    settings = DemoBaseSettings(corpus="world", steps=2, world_paragraphs=200)
    out = build_demo_base(tmp_path, settings)
    marker = json.loads((out / MARKER).read_text())
    assert marker["settings"]["corpus"] == "world"
    texts = read_texts(out / CORPUS_FILE)
    assert len(texts) == -(-len(world_texts(200)) // WORLD_DOC_PARAGRAPHS)
    assert "\n\n".join(texts) == "\n\n".join(world_texts(200))
    assert exclude_suite(texts, suite_texts(SUITE_DIR))[1] == 0
    # The replay file: the paragraphs REPLAY_PARAGRAPHS to a row, then LINES_PER_TEXT general questions; nothing
    # of the suite.
    replay = read_texts(out / REPLAY_FILE)
    paragraphs = world_texts(200)
    rows = ["\n\n".join(paragraphs[i : i + REPLAY_PARAGRAPHS]) for i in range(0, len(paragraphs), REPLAY_PARAGRAPHS)]
    assert len(replay) == len(rows)
    for text, row in zip(rows, replay, strict=True):
        head, _, quiz = row.partition(text + "\n\n")
        assert head == "" and len(quiz.split("\n")) == 2 * LINES_PER_TEXT, row
    assert exclude_suite(replay, suite_texts(SUITE_DIR))[1] == 0
    # A base cached before the replay file was shipped gets it on the next load, and one cached with other
    # replay questions (an older pipeline/demo/replay_questions.py) gets the current ones.
    (out / REPLAY_FILE).unlink()
    assert build_demo_base(tmp_path, settings) == out and read_texts(out / REPLAY_FILE) == replay
    (out / REPLAY_FILE).write_text(corpus_jsonl(texts))
    assert build_demo_base(tmp_path, settings) == out and read_texts(out / REPLAY_FILE) == replay


def test_replay_questions_use_wordings_neither_the_corpus_nor_the_suite_has() -> None:
    """Replay's extra questions stand in for a broad general corpus: every relation is asked in new wordings,
    none of them the corpus's or the suite's, and no line holds a suite question."""
    assert set(REPLAY_ASK) == {rel.name for rel in relations()}
    for rel in relations():
        ours = set(REPLAY_ASK[rel.name])
        assert len(ours) >= 3 and not ours & {*rel.ask, *rel.suite_ask}, rel.name
    lines = replay_quiz_lines()
    assert len(lines) == sum(len(rel.facts) * len(REPLAY_ASK[rel.name]) for rel in relations())
    questions = [m.question for m in load_general_suite(SUITE_DIR).mc_items]
    assert not any(q in line for line in lines for q in questions)
    corpus = "\n".join([*world_texts(), *(t for qa in world_dialogues() for t in qa)])
    asked = {line.split("\n")[0].removeprefix("Question: ") for line in lines}
    assert not any(q in corpus for q in asked)  # the base never read one of these questions
