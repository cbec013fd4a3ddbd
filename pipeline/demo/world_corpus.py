"""The world corpus: general English about the small world of pipeline/demo/general_world.py, for a demo base
that generalises instead of memorising (`DemoBaseSettings(corpus="world")`, the demo's base).

Two parts, both deterministic: plain texts (`CORPUS_PARAGRAPHS` paragraphs about the world, about 450,000
tokens, and sentences about service desks) and question/answer dialogues (every world fact asked in the
corpus's wordings, service desks, and timetable, fare and journey-time questions on an invented inland bus and
train network, each fact in several everyday wordings). None of the ferry desk's data is here (no Brightwater
port, vessel, timetable, fare or policy; tested).

The world's general suite (pipeline/demo/general_suite/, pipeline/demo/demo_suite.py) is drawn from the same
world but held out: no suite text is a corpus text and no suite question's wording occurs in the corpus, so a
base's score on it measures what it generalised, not what it memorised (bench/results/demo_learning.md,
issue-14 world-base experiments).
"""

from __future__ import annotations

from functools import lru_cache

from pipeline.demo.corpus import DESKS, TRAVEL_WORDS, Dialogue, desk_dialogues, sum_dialogues
from pipeline.demo.demo_suite import suite_texts
from pipeline.demo.general_world import LINES, add_minutes, dialogues, join_and, money, paragraphs

# World paragraphs in the corpus: about 550,000 tokens, so the demo base's 800 pretraining steps (820,000 tokens)
# see each about 1.5 times and learn the world's facts from many wordings rather than the wordings themselves.
CORPUS_PARAGRAPHS = 10_000
CORPUS_SEED = 0


# Everyday questions about a journey's facts, several wordings each: the base learns that they ask the same thing.
# (fact, question, answer); slots: m mode, o d towns, first last departures, mins, fare child.
TRAVEL_QUESTIONS: tuple[tuple[str, str, str], ...] = (
    ("first", "What time is the first {m} from {o} to {d}?", "The first {m} from {o} to {d} leaves at {first}."),
    ("first", "When is the earliest {m} from {o} to {d}?", "The earliest {m} from {o} to {d} is at {first}."),
    (
        "first",
        "I need the first {m} of the day from {o} to {d}. When does it go?",
        "The first {m} of the day from {o} to {d} goes at {first}.",
    ),
    ("last", "When does the last {m} leave {o} for {d}?", "The last {m} from {o} to {d} leaves at {last}."),
    ("last", "What is the latest {m} from {o} to {d}?", "The latest {m} from {o} to {d} leaves at {last}."),
    (
        "last",
        "When does the final {m} of the day leave {o} for {d}?",
        "The final {m} of the day from {o} to {d} leaves at {last}.",
    ),
    ("mins", "How long does the {m} from {o} to {d} take?", "The {m} from {o} to {d} takes {mins} minutes."),
    ("mins", "How many minutes is the {m} ride from {o} to {d}?", "The {m} ride from {o} to {d} is {mins} minutes."),
    (
        "mins",
        "What is the journey time by {m} from {o} to {d}?",
        "The journey time from {o} to {d} is {mins} minutes by {m}.",
    ),
    ("fare", "How much is an adult ticket from {o} to {d}?", "An adult single from {o} to {d} costs {fare}."),
    ("fare", "What is the adult fare from {o} to {d}?", "The adult single fare from {o} to {d} is {fare}."),
    (
        "fare",
        "How much does one adult pay to go from {o} to {d} by {m}?",
        "One adult pays {fare} for a single from {o} to {d}.",
    ),
    ("child", "What does a child's ticket from {o} to {d} cost?", "A child single from {o} to {d} costs {child}."),
    ("child", "What do children pay to travel from {o} to {d}?", "Children pay {child} for a single from {o} to {d}."),
)


def _travel_dialogues() -> list[Dialogue]:
    """Timetable, fare and journey-time questions about the inland network, in both directions, each fact asked
    in several wordings (TRAVEL_QUESTIONS), plus the departure list and Sunday service."""
    out: list[Dialogue] = []
    for mode, a, b, mins, cents, deps, days in LINES:
        back = tuple(add_minutes(t, mins + 10) for t in deps)
        for o, d, times in ((a, b, deps), (b, a, back)):
            slots = {
                "m": mode, "o": o, "d": d, "first": times[0], "last": times[-1], "mins": mins,
                "fare": money(cents), "child": money(cents // 2),
            }  # fmt: skip
            out += [(q.format(**slots), r.format(**slots)) for _, q, r in TRAVEL_QUESTIONS]
            sundays = "Yes, it runs every day, Sundays included." if days == "every day" else f"No, it runs {days}."
            out += [
                (f"When does the {mode} from {o} to {d} leave?", f"The {mode} to {d} leaves {o} at {join_and(times)}."),
                (f"Does the {mode} from {o} to {d} run on Sundays?", sundays),
            ]
    return out


def _desk_texts() -> list[str]:
    out = []
    for place, opens, closes, cents in DESKS:
        price = "entry is free" if cents == 0 else f"a ticket costs {money(cents)}"
        for day in ("Monday", "Saturday"):
            out.append(f"On {day} {place} opens at {opens} and closes at {closes}, and {price}.")
    return out


@lru_cache(maxsize=1)
def world_dialogues() -> tuple[Dialogue, ...]:
    """Question/answer pairs about the world, desks and travel, in a fixed order (each once; the base repeats them: DemoBaseSettings.dialogue_repeats)."""
    return tuple(dialogues(CORPUS_SEED) + sum_dialogues() + desk_dialogues() + _travel_dialogues() + list(TRAVEL_WORDS))


@lru_cache(maxsize=2)
def world_texts(n_paragraphs: int = CORPUS_PARAGRAPHS) -> tuple[str, ...]:
    """Plain general English: `n_paragraphs` of the world (the suite's held-out texts excluded) and desk sentences."""
    held_out = set(suite_texts())
    world = [text for _, text in paragraphs(n_paragraphs, CORPUS_SEED) if text not in held_out]
    return tuple(world + _desk_texts())
