"""The demo's replay file: the world base's pretraining paragraphs, each followed by general-knowledge questions
in wordings the base never read.

Why (bench/results/demo_learning.md, KL replay on the world base): the world corpus asks each kind of fact in
only two wordings, far narrower than any real general corpus. An adapter trained on the ferry desk, whose
questions are all new to the base, learns "a question in words I have not seen gets a desk answer", and replay
of the corpus alone holds the base only where the corpus reaches: on the held-out suite's questions (a third
wording) KL(base || adapter) at the answer was 0.76 nats against 0.04 on the corpus's own quiz lines, and
about 30 of the 261 multiple-choice items flipped. A real replay set (general instruction data) asks things in
many ways; these lines stand in for that breadth. With `train.replay.loss: kl` their answers are not taught:
each position's target is the base's own prediction.

The wordings here are requests and inverted questions ("Tell me ...", "Do you know ...", "... eats what?"): none
is a corpus wording (`Relation.ask`) or the suite's (`Relation.suite_ask`), and no line contains a suite
question (tests/test_demo_suite.py); the replay's suite-exclusion rule checks the file again at every run.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from pipeline.demo.general_world import capitalised, relations, with_article

# Per relation (general_world.relations()): what is asked, as a noun phrase, and one inverted question. Slots:
# {s} (subject) and {a_s} ("a"/"an" + subject).
_ASKED: dict[str, tuple[str, str]] = {
    "animal_home": ("the home of {a_s}", "{a_s} lives where?"),
    "animal_food": ("the food of {a_s}", "{a_s} eats what?"),
    "animal_sound": ("the sound of {a_s}", "{a_s} goes how?"),
    "capital": ("the capital city of {s}", "{s} has its capital where?"),
    "continent": ("the continent of {s}", "{s} is on what continent?"),
    "language": ("the language spoken in {s}", "People in {s} speak what?"),
    "food_kind": ("the kind of food {a_s} is", "{a_s} is what kind of food?"),
    "food_colour": ("the colour of {a_s}", "{a_s} is what colour?"),
    "object_room": ("the room where the {s} is kept", "The {s} is kept in what room?"),
    "object_use": ("the use of the {s}", "The {s} is used for what?"),
    "workplace": ("the workplace of {a_s}", "{a_s} works where?"),
    "season": ("the season of {s}", "{s} is in what season?"),
    "next_month": ("the month after {s}", "After {s} comes what month?"),
    "next_day": ("the day after {s}", "After {s} comes what day?"),
}
# Requests around the noun phrase: breadth of form, which is what the suite's questions test. Measured
# (bench/results/demo_learning.md, e50-e54): eight forms per relation instead of three kept more held-out fares
# (18/27 against 15/27) and flipped fewer multiple-choice items, at the same number of replay tokens.
_REQUESTS = (
    "Tell me {P}.",
    "Name {P}.",
    "Do you know {P}?",
    "Could you say {P}?",
    "I would like to know {P}.",
    "Remind me of {P}.",
    "Give me {P}, please.",
)
REPLAY_ASK: dict[str, tuple[str, ...]] = {
    rel: (*(r.replace("{P}", phrase) for r in _REQUESTS), inverted) for rel, (phrase, inverted) in _ASKED.items()
}
# Question lines after each replay row. Measured (bench/results/demo_learning.md, multiple-choice items the demo
# adapter flips): 30-36 without them; rows of four paragraphs with 4, 8 or 16 lines 19-23 (more lines cost
# held-out fares); rows of one or two paragraphs with 2 lines 20-29. Which way the flips net varies by seed.
LINES_PER_TEXT = 2


def replay_quiz_lines() -> tuple[str, ...]:
    """Every fact of the world in every replay wording, as "Question: ...\\nAnswer: value" lines."""
    lines = []
    for rel in relations():
        for s, v in rel.facts:
            for wording in REPLAY_ASK[rel.name]:
                q = capitalised(wording.format(s=s, a_s=with_article(s)))
                lines.append(f"Question: {q}\nAnswer: {v}")
    return tuple(lines)


def replay_texts(texts: Sequence[str], per_text: int = LINES_PER_TEXT, seed: int = 0) -> list[str]:
    """Each text (a world paragraph) followed by `per_text` question lines drawn by `seed` (the demo base's replay
    file)."""
    pool = replay_quiz_lines()
    rng = random.Random(seed)
    return [f"{t}\n\n" + "\n".join(rng.sample(pool, per_text)) for t in texts]
