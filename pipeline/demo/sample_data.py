"""Deterministic sample support pairs for Brightwater Ferries, a fictional ferry company.

Every port, vessel, timetable and fare below is invented. Answers are filled in from these
tables rather than typed by hand, so no two pairs contradict each other and a model trained
on them can be checked for factual consistency.
"""

from __future__ import annotations

import random
from functools import lru_cache
from typing import NamedTuple

import pandas as pd

from pipeline.evaluate.general_suite import load_general_suite
from pipeline.ingest.records import records_frame

CATEGORIES: tuple[str, ...] = ("schedules", "tickets", "lost_property", "accessibility")

Pair = tuple[str, str]


class Port(NamedTuple):
    name: str
    step_free: bool
    hearing_loop: bool
    accessible_toilet: bool


class Vessel(NamedTuple):
    name: str
    home_port: str
    wheelchair_spaces: int
    lift: bool


class Route(NamedTuple):
    a: str
    b: str
    minutes: int
    vessel: str
    adult_cents: int  # integer cents so derived fares never suffer float rounding
    car_cents: int | None  # None: foot passengers and bicycles only
    days: tuple[str, ...]
    deps_a: tuple[str, ...]  # departures from a
    deps_b: tuple[str, ...]  # departures from b


DAYS: tuple[str, ...] = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MON_SAT: tuple[str, ...] = DAYS[:6]

# Tables are kept one entry per line for readability; the formatter would explode them.
# fmt: off
PORTS: dict[str, Port] = {p.name: p for p in (
    Port("Port Alder", True, True, True),  # the mainland hub
    Port("Gullhaven", True, True, True),
    Port("Kestrel Isle", True, False, True),
    Port("Marrowby", True, True, False),
    Port("Saltmere", True, False, False),
    Port("Inchcrag", False, False, False),
    Port("Lantern Quay", True, True, True),
    Port("Dunmoor Point", False, False, True),
)}

VESSELS: dict[str, Vessel] = {v.name: v for v in (
    Vessel("MV Heron", "Port Alder", 4, True),
    Vessel("MV Corran Star", "Kestrel Isle", 4, True),
    Vessel("MV Skerry Lass", "Marrowby", 3, True),
    Vessel("MV Tidewren", "Gullhaven", 2, False),
    Vessel("MV Little Auk", "Marrowby", 1, False),
    Vessel("MV Bramble", "Lantern Quay", 3, True),
    Vessel("MV Skua", "Kestrel Isle", 1, False),
)}

ROUTES: tuple[Route, ...] = (
    Route("Port Alder", "Gullhaven", 45, "MV Heron", 950, 2800, DAYS,
          ("06:45", "09:30", "12:15", "15:00", "18:30"), ("07:45", "10:30", "13:15", "16:00", "19:30")),
    Route("Port Alder", "Kestrel Isle", 70, "MV Corran Star", 1400, 3600, DAYS,
          ("07:00", "11:00", "16:00"), ("08:30", "12:45", "17:45")),
    Route("Port Alder", "Marrowby", 55, "MV Skerry Lass", 1150, 3100, DAYS,
          ("06:30", "10:00", "14:00", "17:30"), ("07:45", "11:15", "15:15", "18:45")),
    Route("Gullhaven", "Saltmere", 30, "MV Tidewren", 650, 1800, MON_SAT,
          ("08:15", "12:00", "16:45"), ("09:00", "12:45", "17:30")),
    Route("Marrowby", "Inchcrag", 25, "MV Little Auk", 500, None, MON_SAT,
          ("09:00", "13:30", "17:00"), ("09:40", "14:10", "17:40")),
    Route("Port Alder", "Lantern Quay", 90, "MV Bramble", 1650, 4200, DAYS,
          ("08:00", "14:30"), ("10:15", "16:45")),
    Route("Kestrel Isle", "Dunmoor Point", 35, "MV Skua", 600, None,
          ("Monday", "Wednesday", "Friday", "Saturday"), ("09:15", "15:30"), ("10:00", "16:15")),
)

# (noun, valuable): valuables go to the secure office and are kept longer.
ITEMS: tuple[tuple[str, bool], ...] = (
    ("umbrella", False), ("phone", True), ("wallet", True), ("backpack", False),
    ("pair of glasses", False), ("jacket", False), ("laptop", True), ("set of keys", True),
    ("camera", True), ("scarf", False), ("passport", True), ("child's toy", False),
)

# Policies shared by every answer that mentions them.
POLICY: dict[str, str] = {
    "bike": "$3.00", "change_h": "2", "refund_h": "24", "refund_fee": "$5.00", "postage": "$6.00",
    "keep": "30", "keep_v": "90", "secure": "Port Alder",
    "lost_tel": "01632 960450", "assist_tel": "01632 960451",  # 01632 960xxx is reserved for fiction
}
RETURN_TENTHS = 18  # a return costs 1.8 singles

# Templates: (prompt, response). Slots are filled from the tables above plus POLICY.
ROUTE_T: dict[str, tuple[Pair, ...]] = {
    "schedules": (
        ("What time is the first ferry from {o} to {d}?",
         "The first sailing from {o} to {d} leaves at {first}. The crossing takes about {mins} minutes."),
        ("When does the last boat leave {o} for {d}?",
         "The last departure from {o} to {d} is at {last}, arriving at about {last_arr}."),
        ("How long is the crossing from {o} to {d}?",
         "The crossing from {o} to {d} takes about {mins} minutes on the {v}."),
        ("What are the departure times from {o} to {d}?",
         "Ferries from {o} to {d} leave at {deps}, running {days}."),
        ("Which vessel runs the {o} to {d} sailing?",
         "The {o} to {d} route is sailed by the {v}. The crossing takes about {mins} minutes."),
    ),
    "tickets": (
        ("How much is an adult single from {o} to {d}?",
         "An adult single from {o} to {d} costs {fare}. An adult return is {ret}."),
        ("What does a child's ticket from {o} to {d} cost?",
         "Children aged 5 to 15 pay half fare, so a child single from {o} to {d} is {child}. "
         "Children under 5 travel free."),
        ("Can I take my car from {o} to {d}, and what does it cost?", "{car}"),
        ("Can I bring my bicycle on the ferry from {o} to {d}?",
         "Yes, bicycles can travel on every sailing from {o} to {d} for {bike} each way. "
         "Please wheel it aboard after foot passengers have boarded."),
        ("Can I change my {o} to {d} ticket to a later sailing?",
         "Yes, you can move your {o} to {d} ticket to another sailing free of charge up to {change_h} "
         "hours before departure. Changes can be made at any ticket desk or by phone."),
        ("Can I get a refund on my ticket from {o} to {d}?",
         "Tickets from {o} to {d} can be refunded up to {refund_h} hours before departure, minus a "
         "{refund_fee} fee. After that you can still change to another sailing."),
    ),
    "accessibility": (
        ("Do I need to book assistance to travel from {o} to {d}?",
         "Assistance is free, but please book it at least 24 hours ahead on {assist_tel}. "
         "Crew on the {v} will then meet you at {o} and help you to your seat."),
        ("Can my assistance dog travel with me from {o} to {d}?",
         "Yes, assistance dogs travel free on every sailing from {o} to {d} and may stay with you in "
         "the lounge. Other dogs must stay on the outer deck."),
        ("Does my carer pay to travel from {o} to {d}?",
         "With a Brightwater Access Card, one companion travels with you free of charge. "
         "You pay the normal {fare} adult single from {o} to {d}."),
    ),
}
CAR_YES = ("Yes, cars can travel from {o} to {d} for a supplement of {car_fare} each way, on top of "
           "passenger fares. Please book vehicle space in advance.")
CAR_NO = ("Sorry, the {v} on the {o} to {d} route carries foot passengers and bicycles only, so cars "
          "cannot be taken.")
DAY_T = "Is there a ferry from {o} to {d} on {day}?"
DAY_YES = "Yes, ferries from {o} to {d} run on {day}s, leaving at {deps}."
DAY_NO = "No, there is no {o} to {d} sailing on {day}s. This route runs {days}."
ARRIVE_T = ("If I catch the {t} ferry from {o}, when do I reach {d}?",
            "The {t} from {o} arrives in {d} at about {arr}. The crossing takes {mins} minutes on the {v}.")
GROUP_T = ("What is the total for {k} adults travelling single from {o} to {d}?",
           "{K} adult singles from {o} to {d} cost {total} in total, at {fare} each.")
WHEELCHAIR_T = ("I use a wheelchair. Can I board the {t} sailing from {o} to {d}?",
                "Yes, the {t} from {o} is sailed by the {v}, which has {spaces}. {board} "
                "Please book assistance 24 hours ahead on {assist_tel} to guarantee your space.")
STEP_FREE = "The {o} terminal is step-free all the way to the ramp."
SLIPWAY = "Boarding at {o} is up a steep slipway, so crew will help you aboard."

LOST_VESSEL_T = "I left my {item} on the {v}. What should I do?"
LOST_VESSEL = ("Items left on the {v} go to the lost property desk at {home}, where they are kept for "
               "{keep} days. Call {lost_tel} with a description of your {item} and your sailing time.")
LOST_VESSEL_V = ("Valuables such as {a_item} found on the {v} go to the secure lost property office at "
                 "{secure}, where they are kept for {keep_v} days. Call {lost_tel} with a description "
                 "and your sailing time.")
LOST_PORT_T = "Has anyone handed in {a_item} at {port}?"
LOST_PORT = ("Items handed in at {port} are logged the same day and kept there for {keep} days. "
             "Call {lost_tel} with a description of your {item} and staff will check the {port} log.")
LOST_PORT_V = ("Valuables handed in at {port} are sent to the secure office at {secure} the same day. "
               "Call {lost_tel} with a description of your {item} and staff will check the log for you.")
KEEP_T = "How long do you keep {a_item} that was left behind?"
KEEP = ("Lost items such as {a_item} are kept for {keep} days. Unclaimed items are then donated to "
        "local charities.")
KEEP_V = ("Valuables such as {a_item} are kept for {keep_v} days at the secure office in {secure}. "
          "Unclaimed valuables are then handed to the police.")
POST_T = ("Can you post my lost {item} back to me?",
          "Yes, once we have matched your {item} we can post it to you for a flat fee of {postage}. "
          "Collecting it in person from the office holding it is free.")

# (prompt, answer when the facility exists, answer when it does not)
PORT_T: tuple[tuple[str, str, str], ...] = (
    ("Is the {port} terminal step-free?",
     "Yes, the {port} terminal is step-free from the entrance to the boarding ramp.",
     "No, boarding at {port} is up a steep slipway. Crew will help you if you book assistance at "
     "least 24 hours ahead on {assist_tel}."),
    ("Does {port} have a hearing loop at the ticket desk?",
     "Yes, the ticket desk at {port} has a hearing loop. Look for the loop sign by the window.",
     "No, {port} has no hearing loop yet. Staff can write information down for you, and departure "
     "times are posted by the pier."),
    ("Is there an accessible toilet at {port}?",
     "Yes, there is an accessible toilet in the {port} waiting room.",
     "No, there is no accessible toilet at {port}. Every Brightwater vessel has one on board."),
)
VESSEL_T: tuple[tuple[str, str, str], ...] = (
    ("Does the {v} have a lift between decks?",
     "Yes, the {v} has a lift linking all of its passenger decks.",
     "No, the {v} has no lift, but its lounge and wheelchair space are on the boarding deck, so no "
     "stairs are needed."),
    ("Can I take my mobility scooter on the {v}?",
     "Yes, the {v} takes mobility scooters up to 120 cm long in one of its {spaces}. Please mention "
     "the scooter when you book assistance.",
     "Sorry, the {v} is a small boat with one wheelchair space and cannot carry mobility scooters. "
     "A folding wheelchair can be stowed on board instead."),
    ("How many wheelchair spaces are there on the {v}?",
     "The {v} has {spaces}. Please book assistance 24 hours ahead on {assist_tel} to reserve one.",
     "The {v} has {spaces}. Please book assistance 24 hours ahead on {assist_tel} to reserve it."),
)
# fmt: on


def _money(cents: int) -> str:
    return f"${cents // 100}.{cents % 100:02d}"


def _and(words: tuple[str, ...] | list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _add(hhmm: str, minutes: int) -> str:
    total = int(hhmm[:2]) * 60 + int(hhmm[3:]) + minutes
    return f"{total // 60 % 24:02d}:{total % 60:02d}"


def _days_text(days: tuple[str, ...]) -> str:
    if days == DAYS:
        return "every day"
    if days == MON_SAT:
        return "Monday to Saturday"
    return "on " + _and([d + "s" for d in days])


def _spaces(k: int) -> str:
    return f"{k} wheelchair space" + ("s" if k != 1 else "")


def _fill(template: Pair, ctx: dict[str, str]) -> Pair:
    pair = template[0].format(**ctx), template[1].format(**ctx)
    key = FACT_KEYS.get(template[0])
    if key is not None:  # a fact question: remember the string its right answer must contain
        _FACTS[pair[0]] = ctx[key] if key != "mins" else f"{ctx['mins']} minutes"
    return pair


# Fact questions (fares, times, timetables): the prompt template -> the slot holding the fact the answer
# must state. The demo checks an answer by looking for that exact string ("$9.50", "06:45", "45 minutes").
FACT_KEYS: dict[str, str] = {
    ROUTE_T["schedules"][0][0]: "first",
    ROUTE_T["schedules"][1][0]: "last",
    ROUTE_T["schedules"][2][0]: "mins",
    ROUTE_T["tickets"][0][0]: "fare",
    ROUTE_T["tickets"][1][0]: "child",
    ARRIVE_T[0]: "arr",
    GROUP_T[0]: "total",
}
_FACTS: dict[str, str] = {}

# The demo's extra phrasings of the lookup facts (first and last sailing, crossing time, adult and child
# fare): with ROUTE_T's own question, every such fact of every route and direction is asked three ways, so
# a held-out question about it has the same fact stated in other training rows. Not in sample_pairs()
# (the tests' tiny model reads that), only in demo_pairs().
RESTATED_T: dict[str, tuple[tuple[str, Pair], ...]] = {
    "schedules": (
        ("first", ("When is the earliest sailing from {o} to {d}?",
                   "The earliest sailing from {o} to {d} is at {first}.")),
        ("first", ("I need the first boat of the day from {o} to {d}. When does it go?",
                   "The first boat of the day from {o} to {d} goes at {first}.")),
        ("last", ("What is the latest sailing from {o} to {d}?",
                  "The latest sailing from {o} to {d} leaves at {last}.")),
        ("last", ("When does the final ferry of the day leave {o} for {d}?",
                  "The final ferry of the day from {o} to {d} leaves at {last}.")),
        ("mins", ("How many minutes does the ferry from {o} to {d} take?",
                  "The ferry from {o} to {d} takes {mins} minutes.")),
        ("mins", ("What is the journey time by ferry from {o} to {d}?",
                  "The journey time from {o} to {d} is {mins} minutes by ferry.")),
    ),
    "tickets": (
        ("fare", ("What is the adult fare from {o} to {d}?",
                  "The adult single fare from {o} to {d} is {fare}.")),
        ("fare", ("How much does one adult pay to sail from {o} to {d}?",
                  "One adult pays {fare} for a single from {o} to {d}.")),
        ("child", ("How much is a child single from {o} to {d}?",
                   "A child single from {o} to {d} costs {child}.")),
        ("child", ("What do children pay to sail from {o} to {d}?",
                   "Children aged 5 to 15 pay {child} for a single from {o} to {d}.")),
    ),
}  # fmt: skip
FACT_KEYS.update({t[0]: key for templates in RESTATED_T.values() for key, t in templates})
# ROUTE_T's lookup-fact questions: asked in the demo alongside their RESTATED_T phrasings.
LOOKUP_T = {
    ROUTE_T[cat][i][0]
    for cat, i in (("schedules", 0), ("schedules", 1), ("schedules", 2), ("tickets", 0), ("tickets", 1))
}


def fact_of(prompt: str) -> str | None:
    """The fact (fare, time, duration) a right answer to this sample or demo prompt states; None for other prompts."""
    _pool()  # fills _FACTS
    _restated()
    return _FACTS.get(prompt)


def fact_answered(prompt: str, answer: str) -> bool | None:
    """Whether `answer` states the fact `prompt` asks for (exact string match); None when it asks for none."""
    fact = fact_of(prompt)
    return None if fact is None else fact in answer


def _route_contexts() -> list[tuple[Route, tuple[str, ...], dict[str, str]]]:
    """(route, departures, template slots) of every route in each direction, in a fixed order."""
    out = []
    for r in ROUTES:
        for o, d, deps in ((r.a, r.b, r.deps_a), (r.b, r.a, r.deps_b)):
            vessel = VESSELS[r.vessel]
            ctx = dict(POLICY, o=o, d=d, v=r.vessel, mins=str(r.minutes), first=deps[0], last=deps[-1],
                       last_arr=_add(deps[-1], r.minutes), deps=_and(deps), days=_days_text(r.days),
                       fare=_money(r.adult_cents), ret=_money(r.adult_cents * RETURN_TENTHS // 10),
                       child=_money(r.adult_cents // 2), car_fare=_money(r.car_cents or 0),
                       spaces=_spaces(vessel.wheelchair_spaces))  # fmt: skip
            ctx["car"] = (CAR_NO if r.car_cents is None else CAR_YES).format(**ctx)
            ctx["board"] = (STEP_FREE if PORTS[o].step_free else SLIPWAY).format(**ctx)
            out.append((r, deps, ctx))
    return out


def _route_pairs() -> dict[str, list[Pair]]:
    """Pairs whose facts come from one route in one direction."""
    out: dict[str, list[Pair]] = {cat: [] for cat in CATEGORIES}
    for r, deps, ctx in _route_contexts():
        for cat, templates in ROUTE_T.items():
            out[cat] += [_fill(t, ctx) for t in templates]
        for day in DAYS:
            answer = DAY_YES if day in r.days else DAY_NO
            out["schedules"].append(_fill((DAY_T, answer), dict(ctx, day=day)))
        for t in deps:
            tctx = dict(ctx, t=t, arr=_add(t, r.minutes))
            out["schedules"].append(_fill(ARRIVE_T, tctx))
            out["accessibility"].append(_fill(WHEELCHAIR_T, tctx))
        for k, word in ((2, "two"), (3, "three"), (4, "four")):
            gctx = dict(ctx, k=word, K=word.capitalize(), total=_money(k * r.adult_cents))
            out["tickets"].append(_fill(GROUP_T, gctx))
    return out


def _lost_property() -> list[Pair]:
    out: list[Pair] = []
    for item, valuable in ITEMS:
        ctx = dict(POLICY, item=item, a_item=_a(item))
        for v in VESSELS.values():
            answer = LOST_VESSEL_V if valuable else LOST_VESSEL
            out.append(_fill((LOST_VESSEL_T, answer), dict(ctx, v=v.name, home=v.home_port)))
        for port in PORTS:
            out.append(_fill((LOST_PORT_T, LOST_PORT_V if valuable else LOST_PORT), dict(ctx, port=port)))
        out += [_fill((KEEP_T, KEEP_V if valuable else KEEP), ctx), _fill(POST_T, ctx)]
    return out


def _facilities() -> list[Pair]:
    """Accessibility pairs about one port or one vessel."""
    out: list[Pair] = []
    for p in PORTS.values():
        ctx = dict(POLICY, port=p.name)
        for (q, yes, no), has in zip(PORT_T, (p.step_free, p.hearing_loop, p.accessible_toilet), strict=True):
            out.append(_fill((q, yes if has else no), ctx))
    for v in VESSELS.values():
        ctx = dict(POLICY, v=v.name, spaces=_spaces(v.wheelchair_spaces))
        roomy = v.wheelchair_spaces > 1  # scooters need a spare space; "one" vs "it" wording too
        for (q, yes, no), has in zip(VESSEL_T, (v.lift, roomy, roomy), strict=True):
            out.append(_fill((q, yes if has else no), ctx))
    return out


@lru_cache(maxsize=1)
def _pool() -> dict[str, tuple[Pair, ...]]:
    """All unique pairs per category, in a fixed order (no randomness here)."""
    raw = _route_pairs()
    raw["lost_property"] += _lost_property()
    raw["accessibility"] += _facilities()
    seen: set[str] = set()
    pool: dict[str, tuple[Pair, ...]] = {}
    for cat in CATEGORIES:
        kept: list[Pair] = []
        for prompt, response in raw[cat]:
            if prompt not in seen:  # prompts must be unique across the whole set
                seen.add(prompt)
                kept.append((prompt, response))
        pool[cat] = tuple(kept)
    return pool


@lru_cache(maxsize=1)
def _restated() -> dict[str, tuple[Pair, ...]]:
    """The demo's lookup-fact rows per category: ROUTE_T's lookup questions and their RESTATED_T phrasings, for
    every route and direction, in a fixed order."""
    out: dict[str, list[Pair]] = {cat: [] for cat in CATEGORIES}
    for _, _, ctx in _route_contexts():
        for cat, templates in ROUTE_T.items():
            out[cat] += [_fill(t, ctx) for t in templates if t[0] in LOOKUP_T]
        for cat, restated in RESTATED_T.items():
            out[cat] += [_fill(t, ctx) for _, t in restated]
    return {cat: tuple(pairs) for cat, pairs in out.items()}


def demo_pairs(n_other: int = 190, seed: int = 0) -> list[dict[str, str]]:
    """The demo's rows: every lookup fact (first/last sailing, crossing time, adult/child fare) of every route
    and direction asked three ways (210 rows), plus `n_other` rows of the sample pool that ask no fact
    (timetables, days, cars, lost property, accessibility...), shuffled by `seed`.

    Questions whose fact is computed rather than looked up (arrival time from a departure, group totals)
    are left out: a held-out one has no training row that states its fact."""
    facts = [{"prompt": p, "response": r, "category": cat} for cat, pairs in _restated().items() for p, r in pairs]
    pool = {cat: [pr for pr in pairs if fact_of(pr[0]) is None] for cat, pairs in _pool().items()}
    limit = sum(len(v) for v in pool.values())
    if isinstance(n_other, bool) or not isinstance(n_other, int) or not 0 <= n_other <= limit:
        raise ValueError(f"n_other must be an integer between 0 and {limit}, got n_other={n_other!r}")
    rng = random.Random(seed)
    queues = [(cat, rng.sample(pairs, len(pairs))) for cat, pairs in pool.items()]
    other: list[dict[str, str]] = []
    while len(other) < n_other:  # round-robin over categories, as sample_pairs
        for cat, pairs in queues:
            if pairs and len(other) < n_other:
                prompt, response = pairs.pop()
                other.append({"prompt": prompt, "response": response, "category": cat})
    picked = facts + other
    rng.shuffle(picked)
    return picked


def max_pairs() -> int:
    """Number of unique pairs the templates can produce."""
    return sum(len(pairs) for pairs in _pool().values())


def sample_pairs(n: int = 200, seed: int = 0) -> list[dict[str, str]]:
    """Return n deterministic pairs: dicts with keys 'prompt', 'response', 'category'."""
    limit = max_pairs()
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise ValueError(f"n must be an integer between 1 and {limit}, got n={n!r}")
    rng = random.Random(seed)
    queues: list[tuple[str, list[Pair]]] = []
    for cat in CATEGORIES:
        pairs = list(_pool()[cat])
        rng.shuffle(pairs)
        queues.append((cat, pairs))
    # Round-robin over categories keeps them balanced until a category runs dry.
    picked: list[dict[str, str]] = []
    while len(picked) < n:
        for cat, pairs in queues:
            if pairs and len(picked) < n:
                prompt, response = pairs.pop()
                picked.append({"prompt": prompt, "response": response, "category": cat})
    rng.shuffle(picked)  # so that the order does not leak the category rotation
    return picked


def sample_records(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """`sample_pairs(n, seed)` as a PairRecords frame (task ids 1..n), for tests and benchmarks without Label Studio."""
    return _records(sample_pairs(n, seed=seed))


def demo_records(seed: int = 0) -> pd.DataFrame:
    """`demo_pairs()` as a PairRecords frame (task ids 1..n): the demo's rows without Label Studio."""
    return _records(demo_pairs(seed=seed))


def _records(pairs: list[dict[str, str]]) -> pd.DataFrame:
    rows = [
        {
            "task_id": i + 1,
            "annotation_id": 1000 + i,
            "project_id": 1,
            "prompt": p["prompt"],
            "response": p["response"],
            "category": p["category"],
            "annotator": "1",
            "updated_at": "2026-01-01T00:00:00Z",
            "ground_truth": False,
            "system": None,
            "context": None,
        }
        for i, p in enumerate(pairs)
    ]
    return records_frame(rows)


def sample_corpus() -> list[str]:
    """Plain texts (prompts and responses of sample_pairs(), plus the general-suite texts) used to train the tiny tokenizer."""
    texts: list[str] = []
    for pair in sample_pairs():
        texts += [pair["prompt"], pair["response"]]
    # The tokenizer must also cover the general suite, or the forgetting check would be
    # measured mostly on unknown tokens.
    suite = load_general_suite()
    texts += suite.texts
    for item in suite.mc_items:
        texts += [item.question, *item.choices]
    return texts
