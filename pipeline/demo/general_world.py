"""A small world of everyday facts and a generator of general English about it, for a demo base that generalises.

The demo base must *generalise*, not memorise: a base that has its evaluation texts by heart loses them
under any weight change, so its forgetting check can never pass (bench/results/demo_learning.md). Here
every fact (an animal's home, food and sound; a country's capital, continent and language; a food's kind
and colour; a household object's room and use; a job's workplace; a month's season and successor; the
day after a weekday) is stated by many sentence templates, inside paragraphs whose other slots (people,
days, towns) vary, so that the corpus holds tens of thousands of distinct paragraphs and the base sees
most of them once or twice (pipeline/demo/world_corpus.py). Its general suite (pipeline/demo/general_suite/)
is drawn from the same world: its perplexity texts are paragraphs of the same generator with another seed (never in the
corpus), and its multiple-choice questions use question wordings the corpus never uses (`SUITE_ASK`),
so the suite measures what the base learned, in other words than it read.

Nothing of the ferry desk is here (no Brightwater port, vessel, timetable, fare or policy).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

# fmt: off
NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jamal", "Kate", "Leo", "Maya",
         "Noah", "Olga", "Priya", "Ravi", "Rosa", "Sam", "Tom", "Uma", "Victor", "Wendy", "Yusuf", "Zoe", "Lucy")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
SEASON_OF = ("winter", "winter", "spring", "spring", "spring", "summer", "summer", "summer", "autumn", "autumn",
             "autumn", "winter")
SEASON_WEATHER = {
    "winter": ("it is cold", "snow may fall", "the nights are long", "people wear warm coats"),
    "spring": ("flowers open", "the days grow longer", "lambs are born", "the trees turn green"),
    "summer": ("it is hot", "the sun shines late", "people swim outside", "the days are long"),
    "autumn": ("leaves fall from the trees", "the wind blows hard", "apples are picked", "the evenings get darker"),
}
# (animal, sound, home, food)
ANIMALS: tuple[tuple[str, str, str, str], ...] = (
    ("cow", "moo", "on a farm", "grass"), ("sheep", "baa", "in a field", "grass"),
    ("pig", "oink", "in a sty", "scraps"), ("horse", "neigh", "in a stable", "hay"),
    ("goat", "bleat", "on a hill", "weeds"), ("dog", "woof", "in a kennel", "bones"),
    ("cat", "meow", "in a house", "fish"), ("duck", "quack", "on a pond", "bread"),
    ("hen", "cluck", "in a henhouse", "corn"), ("owl", "hoot", "in a barn", "mice"),
    ("frog", "croak", "near a pond", "flies"), ("bee", "buzz", "in a hive", "nectar"),
    ("lion", "roar", "on the savanna", "meat"), ("wolf", "howl", "in the forest", "deer"),
    ("mouse", "squeak", "in a hole", "cheese"), ("snake", "hiss", "in the desert", "eggs"),
    ("donkey", "bray", "in a paddock", "straw"), ("crow", "caw", "in a nest", "worms"),
    ("bear", "growl", "in a cave", "berries"), ("monkey", "chatter", "in the jungle", "bananas"),
    ("elephant", "trumpet", "by a river", "leaves"), ("dolphin", "click", "in the sea", "squid"),
    ("rabbit", "thump", "in a burrow", "carrots"), ("squirrel", "chirp", "in an oak tree", "nuts"),
)
# (country, capital, continent, language)
COUNTRIES: tuple[tuple[str, str, str, str], ...] = (
    ("Japan", "Tokyo", "Asia", "Japanese"), ("France", "Paris", "Europe", "French"),
    ("Egypt", "Cairo", "Africa", "Arabic"), ("Italy", "Rome", "Europe", "Italian"),
    ("Kenya", "Nairobi", "Africa", "Swahili"), ("Canada", "Ottawa", "North America", "English"),
    ("Peru", "Lima", "South America", "Spanish"), ("India", "Delhi", "Asia", "Hindi"),
    ("Spain", "Madrid", "Europe", "Spanish"), ("Australia", "Canberra", "Oceania", "English"),
    ("Mexico", "Mexico City", "North America", "Spanish"), ("Norway", "Oslo", "Europe", "Norwegian"),
    ("Germany", "Berlin", "Europe", "German"), ("China", "Beijing", "Asia", "Chinese"),
    ("Brazil", "Brasilia", "South America", "Portuguese"), ("Greece", "Athens", "Europe", "Greek"),
    ("Portugal", "Lisbon", "Europe", "Portuguese"), ("Poland", "Warsaw", "Europe", "Polish"),
    ("Sweden", "Stockholm", "Europe", "Swedish"), ("Russia", "Moscow", "Europe", "Russian"),
    ("Thailand", "Bangkok", "Asia", "Thai"), ("Turkey", "Ankara", "Asia", "Turkish"),
    ("Chile", "Santiago", "South America", "Spanish"), ("Vietnam", "Hanoi", "Asia", "Vietnamese"),
)
# (food, kind, colour)
FOODS: tuple[tuple[str, str, str], ...] = (
    ("apple", "fruit", "red"), ("banana", "fruit", "yellow"), ("carrot", "vegetable", "orange"),
    ("potato", "vegetable", "brown"), ("lemon", "fruit", "yellow"), ("grape", "fruit", "purple"),
    ("pea", "vegetable", "green"), ("cabbage", "vegetable", "green"), ("plum", "fruit", "purple"),
    ("cherry", "fruit", "red"), ("onion", "vegetable", "white"), ("walnut", "nut", "brown"),
    ("almond", "nut", "brown"), ("orange", "fruit", "orange"), ("beetroot", "vegetable", "purple"),
    ("pumpkin", "vegetable", "orange"), ("strawberry", "fruit", "red"), ("lettuce", "vegetable", "green"),
    ("coconut", "nut", "brown"), ("lime", "fruit", "green"),
)
# (object, room, what it does)
OBJECTS: tuple[tuple[str, str, str], ...] = (
    ("kettle", "kitchen", "boils water"), ("oven", "kitchen", "bakes bread"),
    ("fridge", "kitchen", "keeps food cold"), ("toaster", "kitchen", "browns bread"),
    ("bed", "bedroom", "gives you a place to sleep"), ("wardrobe", "bedroom", "holds your clothes"),
    ("bath", "bathroom", "lets you wash"), ("toothbrush", "bathroom", "cleans your teeth"),
    ("sofa", "living room", "gives you a seat"), ("television", "living room", "shows films"),
    ("lawnmower", "garden", "cuts the grass"), ("watering can", "garden", "waters the plants"),
    ("coat hook", "hall", "holds your coat"), ("doormat", "hall", "wipes muddy shoes"),
    ("washing machine", "utility room", "washes clothes"), ("ironing board", "utility room", "holds shirts flat"),
)
# (job, workplace, what they do)
JOBS: tuple[tuple[str, str, str], ...] = (
    ("baker", "bakery", "bakes bread"), ("doctor", "hospital", "treats patients"),
    ("teacher", "school", "teaches children"), ("farmer", "farm", "grows crops"),
    ("librarian", "library", "looks after books"), ("chef", "restaurant", "cooks meals"),
    ("firefighter", "fire station", "puts out fires"), ("mechanic", "garage", "mends cars"),
    ("dentist", "dental surgery", "looks after teeth"), ("pilot", "airport", "flies planes"),
    ("postman", "post office", "delivers letters"), ("judge", "court", "decides cases"),
    ("banker", "bank", "looks after money"), ("vet", "animal clinic", "treats animals"),
)
TOWNS = (
    "Ashford Green", "Millbrook", "Oakridge", "Fernley", "Stonebridge", "Willowdale", "Hollins Cross", "Redcliffe",
    "Bramley", "Kingsford", "Thornton", "Elmstead", "Barrow Hill", "Linton", "Cobham Lea", "Pinewood",
)
MODES = ("bus", "train", "tram", "coach")
LINE_DAYS = ("every day", "every day", "Monday to Saturday", "Monday to Friday")
WEATHER = ("sunny", "rainy", "windy", "cloudy", "foggy", "cold", "warm", "frosty")
CARRIED = ("an umbrella", "a scarf", "a sandwich", "a book", "a map", "a water bottle", "a backpack", "sunglasses")
# Sentences of nature words that also make up the ferry desk's place and boat names (heron, wren, gull, ...):
# the base reads these words in general English, never the ferry desk's names.
NATURE = (
    "The heron stands very still in shallow water and waits for fish.",
    "A wren is a tiny brown bird with a loud song.", "Gulls nest on the cliffs and follow the fishing boats.",
    "A kestrel hovers in the wind over the fields.", "The skua is a dark seabird that chases other birds.",
    "The little auk is a small black and white seabird of the cold north.",
    "Brambles grow in the hedges and give blackberries in late summer.",
    "Alder trees grow by rivers and lakes, where the ground is wet.",
    "A moor is wide open land covered with heather and grass.", "A crag is a steep rough rock on a hill.",
    "A skerry is a small rocky island in the sea.", "A mere is a small lake.",
    "A lantern is a lamp in a case, carried to light the way at night.",
    "A point is a narrow piece of land that reaches out into the sea.", "A haven is a safe place.",
    "A marrow is a large green vegetable, a bit like a cucumber.", "The star shone over the bay.",
    "A harbour is a sheltered place where boats stay safely.", "A quay is a stone platform beside the water.",
    "An island is land with water all around it.", "The tide comes in over the sand twice a day.",
)
HOUSEHOLD = (
    "Wash your hands before eating.", "Brush your teeth twice a day.", "Drink water when you are thirsty.",
    "A short walk every day keeps you fit.", "When a smoke alarm sounds, leave the building at once.",
    "Milk is kept cold so that it stays fresh.", "Cover your mouth when you sneeze.",
    "Sunscreen protects your skin from sunburn.", "Keys open the front door.", "A lamp gives light at night.",
)
# fmt: on


def with_article(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def capitalised(text: str) -> str:
    return text[0].upper() + text[1:]


def money(cents: int) -> str:
    return f"${cents // 100}.{cents % 100:02d}"


def join_and(words: tuple[str, ...]) -> str:
    """ "a", "a and b", "a, b and c"."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def add_minutes(hhmm: str, minutes: int) -> str:
    total = int(hhmm[:2]) * 60 + int(hhmm[3:]) + minutes
    return f"{total // 60 % 24:02d}:{total % 60:02d}"


Line = tuple[str, str, str, int, int, tuple[str, ...], str]


def _lines(n: int = 28, seed: int = 7) -> tuple[Line, ...]:
    """An inland network (no water, no Brightwater names): `n` lines (mode, town, town, minutes, adult cents,
    departures from the first town, days) between distinct pairs of towns, drawn by `seed`."""
    rng = random.Random(seed)
    pairs = rng.sample([(a, b) for a in TOWNS for b in TOWNS if a < b], n)
    out = []
    for a, b in pairs:
        mode = rng.choice(MODES)
        mins = rng.randrange(10, 95, 5)
        cents = rng.randrange(150, 1600, 5)
        first = rng.randrange(6 * 60, 10 * 60, 5)
        deps = sorted([*rng.sample(range(first, 21 * 60, 5), rng.randint(2, 5)), first])
        times = tuple(dict.fromkeys(f"{t // 60:02d}:{t % 60:02d}" for t in deps))
        out.append((mode, a, b, mins, cents, times, rng.choice(LINE_DAYS)))
    return tuple(out)


LINES: tuple[Line, ...] = _lines()


@dataclass(frozen=True)
class Relation:
    """One kind of fact: subjects with their values, how the corpus states and asks it, and how the suite asks it.

    `say`: statement templates (slots: s subject, a_s "a subject", v value, name, day); `ask`: the corpus's
    question wordings (quiz lines and chat dialogues); `suite_ask`: the suite's question wordings, none in
    the corpus (each fact is asked in every one); `answer`: the full-sentence answer of a chat dialogue.
    """

    name: str
    facts: tuple[tuple[str, str], ...]
    say: tuple[str, ...]
    ask: tuple[str, ...]
    suite_ask: tuple[str, ...]
    answer: str


def relations() -> tuple[Relation, ...]:
    """Every relation of the world, in a fixed order."""
    months = tuple((m, MONTHS[(i + 1) % 12]) for i, m in enumerate(MONTHS))
    days = tuple((d, WEEKDAYS[(i + 1) % 7]) for i, d in enumerate(WEEKDAYS))
    return (
        Relation(
            "animal_home",
            tuple((a, home) for a, _, home, _ in ANIMALS),
            (
                "{A_s} lives {v}.",
                "You can find {a_s} {v}.",
                "{name} saw {a_s} {v} on {day}.",
                "The {s} makes its home {v}.",
                "If you want to see {a_s}, look {v}.",
                "{name} said that the {s} sleeps {v}.",
            ),
            ("Where does {a_s} live?", "Where can you see {a_s}?"),
            (
                "Where would you most likely spot {a_s}?",
                "Where is {a_s} usually found?",
                "Where might you come across {a_s}?",
            ),
            "{A_s} lives {v}.",
        ),
        Relation(
            "animal_food",
            tuple((a, food) for a, _, _, food in ANIMALS),
            (
                "{A_s} eats {v}.",
                "The {s} feeds on {v}.",
                "{name} gave the {s} some {v} on {day}.",
                "For its dinner, {a_s} looks for {v}.",
                "The favourite food of {a_s} is {v}.",
                "{name} knows that {a_s} likes {v}.",
            ),
            ("What does {a_s} eat?", "What food does {a_s} like?"),
            (
                "Which food is {a_s} most likely to eat?",
                "What would {a_s} choose to eat?",
                "What makes a good meal for {a_s}?",
            ),
            "{A_s} eats {v}.",
        ),
        Relation(
            "animal_sound",
            tuple((a, sound) for a, sound, _, _ in ANIMALS),
            (
                "{A_s} says {v}.",
                "The {s} goes {v}, {v}.",
                "{name} heard {a_s} go {v} on {day}.",
                "When {a_s} calls, it says {v}.",
                "The sound of {a_s} is {v}.",
            ),
            ("What does {a_s} say?", "What sound does {a_s} make?"),
            (
                "Which noise comes from {a_s}?",
                "What would you hear from {a_s}?",
                "How does {a_s} call out?",
            ),
            "{A_s} says {v}.",
        ),
        Relation(
            "capital",
            tuple((c, cap) for c, cap, _, _ in COUNTRIES),
            (
                "The capital of {s} is {v}.",
                "{v} is the capital city of {s}.",
                "{name} flew to {v}, the capital of {s}, on {day}.",
                "The government of {s} meets in {v}.",
                "In {s}, the biggest offices of the state are in {v}.",
            ),
            ("What is the capital of {s}?", "Which city is the capital of {s}?"),
            (
                "Which city is {s}'s capital?",
                "In which city is the capital of {s}?",
                "Which city would you visit to see the capital of {s}?",
            ),
            "The capital of {s} is {v}.",
        ),
        Relation(
            "continent",
            tuple((c, cont) for c, _, cont, _ in COUNTRIES),
            (
                "{s} is in {v}.",
                "{s} is a country in {v}.",
                "{name} travelled across {v} and visited {s}.",
                "On a map of {v} you will find {s}.",
            ),
            ("On which continent is {s}?", "Where is {s}?"),
            (
                "To which continent does {s} belong?",
                "Which continent has the country {s}?",
                "Which part of the world is {s} in?",
            ),
            "{s} is in {v}.",
        ),
        Relation(
            "language",
            tuple((c, lang) for c, _, _, lang in COUNTRIES),
            (
                "People in {s} speak {v}.",
                "The main language of {s} is {v}.",
                "{name} learned {v} before moving to {s}.",
                "In {s} the signs are written in {v}.",
            ),
            ("What language do people speak in {s}?", "What is the language of {s}?"),
            (
                "Which language would you hear most in {s}?",
                "Which language do the people of {s} use?",
                "What do people in {s} talk in?",
            ),
            "People in {s} speak {v}.",
        ),
        Relation(
            "food_kind",
            tuple((f, kind) for f, kind, _ in FOODS),
            (
                "{A_s} is {a_v}.",
                "The {s} is {a_v}.",
                "{name} bought {a_s} at the market, because {name} likes {a_v}.",
                "Of all the foods, the {s} counts as {a_v}.",
            ),
            ("What is {a_s}?", "Is {a_s} a fruit or a vegetable?"),
            (
                "What sort of food is {a_s}?",
                "How would you describe {a_s} as a food?",
                "Which group of foods does {a_s} belong to?",
            ),
            "{A_s} is {a_v}.",
        ),
        Relation(
            "food_colour",
            tuple((f, colour) for f, _, colour in FOODS),
            (
                "{A_s} is {v}.",
                "A ripe {s} is {v}.",
                "{name} picked a {v} {s} on {day}.",
                "The skin of {a_s} is {v}.",
            ),
            ("What colour is {a_s}?", "What colour is a ripe {s}?"),
            (
                "Which colour would you expect {a_s} to be?",
                "What colour does {a_s} usually have?",
                "Which colour is {a_s} when it is ripe?",
            ),
            "A ripe {s} is {v}.",
        ),
        Relation(
            "object_room",
            tuple((o, room) for o, room, _ in OBJECTS),
            (
                "The {s} is in the {v}.",
                "{name} keeps the {s} in the {v}.",
                "In most homes the {s} stands in the {v}.",
                "{name} looked in the {v} for the {s} on {day}.",
            ),
            ("Where is the {s} kept?", "In which room is the {s}?"),
            (
                "Which part of a home usually holds the {s}?",
                "In which room would you look for the {s}?",
                "Where in a house does the {s} usually go?",
            ),
            "The {s} is in the {v}.",
        ),
        Relation(
            "object_use",
            tuple((o, use) for o, _, use in OBJECTS),
            (
                "The {s} {v}.",
                "{A_s} {v}.",
                "{name} has {a_s} that {v}.",
                "At home, the {s} {v}.",
            ),
            ("What does the {s} do?", "What is {a_s} for?"),
            (
                "What job does {a_s} do in a home?",
                "What would you use {a_s} for?",
                "Why do people keep {a_s}?",
            ),
            "The {s} {v}.",
        ),
        Relation(
            "workplace",
            tuple((j, place) for j, place, _ in JOBS),
            (
                "{A_s} works in {a_v}.",
                "Every morning the {s} goes to the {v}.",
                "{name} is {a_s} and works at the {v}.",
                "You will meet {a_s} at the {v}.",
            ),
            ("Where does {a_s} work?", "Where does the {s} go to work?"),
            (
                "At which place does {a_s} spend the working day?",
                "Where would you find {a_s} at work?",
                "Which place does {a_s} go to each working day?",
            ),
            "{A_s} works in {a_v}.",
        ),
        Relation(
            "season",
            tuple((m, SEASON_OF[i]) for i, m in enumerate(MONTHS)),
            (
                "{s} is in {v}.",
                "{s} is a {v} month.",
                "{name} was born in {s}, in the {v}.",
                "In {s} it is {v}.",
            ),
            ("In which season is {s}?", "Is {s} in summer or winter?"),
            (
                "Which season is {s} part of?",
                "Which season does {s} fall in?",
                "During which season is {s}?",
            ),
            "{s} is in {v}.",
        ),
        Relation(
            "next_month",
            months,
            ("After {s} comes {v}.", "{v} follows {s}.", "{name} waited for the end of {s}, and then {v} came."),
            ("Which month comes after {s}?", "What month follows {s}?"),
            (
                "Which month is next after {s}?",
                "Which month starts when {s} ends?",
                "Once {s} is over, which month begins?",
            ),
            "{v} comes after {s}.",
        ),
        Relation(
            "next_day",
            days,
            ("After {s} comes {v}.", "{v} follows {s}.", "{name} works on {s} and rests on {v}."),
            ("What day comes after {s}?", "Which day follows {s}?"),
            (
                "Which day is next after {s}?",
                "Which day starts when {s} ends?",
                "Once {s} is over, which day begins?",
            ),
            "{v} comes after {s}.",
        ),
    )


def _slots(s: str, v: str, rng: random.Random) -> dict[str, str]:
    return {
        "s": s,
        "a_s": with_article(s),
        "A_s": capitalised(with_article(s)),
        "v": v,
        "a_v": with_article(v),
        "name": rng.choice(NAMES),
        "day": rng.choice(WEEKDAYS),
    }


# Openings that make a statement one of many sentences (a statement starting with one of `_LOWER` is lowercased
# after them; proper nouns keep their capital).
_OPENINGS = (
    "Everyone knows that ",
    "{name} told {name2} that ",
    "As the teacher said, ",
    "It is true that ",
    "Of course, ",
    "{name} read in a book that ",
    "Most children learn that ",
    "On {day}, {name} explained that ",
)
_LOWER = ("A ", "An ", "The ", "In ", "After ", "For ", "Every ", "If ", "On ", "When ", "You ", "At ", "Of ")


def _state(rel: Relation, s: str, v: str, rng: random.Random, template: str | None = None) -> str:
    sentence = capitalised((template or rng.choice(rel.say)).format(**_slots(s, v, rng)))
    if rng.random() < 0.3:
        opening = rng.choice(_OPENINGS).format(
            name=rng.choice(NAMES), name2=rng.choice(NAMES), day=rng.choice(WEEKDAYS)
        )
        if sentence.startswith(_LOWER):
            sentence = sentence[0].lower() + sentence[1:]
        sentence = opening + sentence
    return sentence


def _fact_paragraph(rng: random.Random, rels: tuple[Relation, ...]) -> str:
    """Three to five statements about one subject (every relation that has it), no template twice."""
    rel = rng.choice(rels)
    s, _ = rng.choice(rel.facts)
    about = [(r, t, dict(r.facts)[s]) for r in rels if s in dict(r.facts) for t in r.say]
    picks = rng.sample(about, min(len(about), rng.randint(3, 5)))
    return " ".join(_state(r, s, v, rng, t) for r, t, v in picks)


def _mixed_paragraph(rng: random.Random, rels: tuple[Relation, ...]) -> str:
    """Three to five statements about different subjects, sometimes with an everyday sentence between them."""
    out = []
    for _ in range(rng.randint(3, 5)):
        rel = rng.choice(rels)
        s, v = rng.choice(rel.facts)
        out.append(_state(rel, s, v, rng))
        if rng.random() < 0.2:
            out.append(rng.choice(HOUSEHOLD + NATURE))
    return " ".join(out)


def _season_paragraph(rng: random.Random) -> str:
    i = rng.randrange(12)
    month, season, name = MONTHS[i], SEASON_OF[i], rng.choice(NAMES)
    a, b = rng.sample(SEASON_WEATHER[season], 2)
    town = rng.choice(TOWNS)
    weather = rng.choice(WEATHER)
    return (
        f"In {month} it is {season}, and {a}. On {rng.choice(WEEKDAYS)} it was {weather} in {town}, so {name} "
        f"took {rng.choice(CARRIED)}. In {season} {b}."
    )


def _trip_paragraph(rng: random.Random) -> str:
    """A journey on the inland network, with its facts (times, minutes, fares) right."""
    mode, a, b, mins, cents, deps, days = rng.choice(LINES)
    back = tuple(add_minutes(t, mins + 10) for t in deps)
    o, d, times = (a, b, deps) if rng.random() < 0.5 else (b, a, back)
    t = rng.choice(times)
    name, day = rng.choice(NAMES), rng.choice(WEEKDAYS)
    child = rng.random() < 0.3
    fare = money(cents // 2) if child else money(cents)
    who = f"{name} and a child" if child else name
    first = rng.choice(
        (
            f"On {day} {who} took the {t} {mode} from {o} to {d}.",
            f"{capitalised(day)} morning: {who} caught the {t} {mode} in {o}, going to {d}.",
            f"{name} wanted to visit {d}, so {name} went to {o} for the {t} {mode}.",
        )
    )
    middle = rng.choice(
        (
            f"The journey took {mins} minutes, and the {mode} reached {d} at {add_minutes(t, mins)}.",
            f"The {mode} from {o} to {d} takes about {mins} minutes.",
            f"It was {rng.choice(WEATHER)}, and the trip took {mins} minutes.",
        )
    )
    price = (
        f"A child single from {o} to {d} costs {fare}."
        if child
        else rng.choice(
            (f"A single ticket cost {fare}.", f"An adult single from {o} to {d} costs {fare}.", f"{name} paid {fare}.")
        )
    )
    extra = rng.choice(
        (
            f"The first {mode} of the day leaves {o} at {times[0]}.",
            f"The last {mode} leaves {o} at {times[-1]}.",
            f"{name} carried {rng.choice(CARRIED)}.",
            f"The {mode} runs {days}.",
            f"Other departures from {o} are at {', '.join(x for x in times if x != t) or 'no other time'}.",
        )
    )
    return " ".join((first, middle, price, extra))


def _quiz(rng: random.Random, rels: tuple[Relation, ...]) -> str:
    """Three to six quiz lines "Question: ...\\nAnswer: value" in the corpus's own question wordings."""
    lines = []
    for _ in range(rng.randint(3, 6)):
        rel = rng.choice(rels)
        s, v = rng.choice(rel.facts)
        q = capitalised(rng.choice(rel.ask).format(**_slots(s, v, rng)))
        lines.append(f"Question: {q}\nAnswer: {v}")
    return "\n".join(lines)


# Paragraph kinds of the corpus and the suite, with their weights.
_KINDS: tuple[tuple[str, float], ...] = (
    ("facts", 0.35),
    ("mixed", 0.25),
    ("quiz", 0.15),
    ("trip", 0.15),
    ("season", 0.1),
)


def paragraph(rng: random.Random, kind: str, rels: tuple[Relation, ...]) -> str:
    """One paragraph of the given kind."""
    makers: dict[str, Callable[[], str]] = {
        "facts": lambda: _fact_paragraph(rng, rels),
        "mixed": lambda: _mixed_paragraph(rng, rels),
        "quiz": lambda: _quiz(rng, rels),
        "trip": lambda: _trip_paragraph(rng),
        "season": lambda: _season_paragraph(rng),
    }
    return makers[kind]()


def paragraphs(n: int, seed: int, kinds: tuple[tuple[str, float], ...] = _KINDS) -> list[tuple[str, str]]:
    """`n` (kind, paragraph) pairs drawn by `seed`."""
    rng = random.Random(seed)
    rels = relations()
    names = [k for k, _ in kinds]
    weights = [w for _, w in kinds]
    out = []
    for _ in range(n):
        kind = rng.choices(names, weights)[0]
        out.append((kind, paragraph(rng, kind, rels)))
    return out


def dialogues(seed: int) -> list[tuple[str, str]]:
    """Chat question/answer pairs: every fact asked in each of the corpus's wordings, answered in a sentence."""
    rng = random.Random(seed)
    out = []
    for rel in relations():
        for s, v in rel.facts:
            for ask in rel.ask:
                slots = _slots(s, v, rng)
                out.append((capitalised(ask.format(**slots)), capitalised(rel.answer.format(**slots))))
    return out


def suite_mc_items(seed: int, choices: int = 4) -> list[dict[str, object]]:
    """Each fact asked in every suite wording of its relation, one item per wording, with distractors (other
    values of the same relation) drawn by `seed` for each item. The items of one fact share a `group`, which the
    forgetting check's bootstrap resamples as one unit: three wordings make the estimate steadier, not the
    number of facts larger."""
    rng = random.Random(seed)
    items: list[dict[str, object]] = []
    for rel in relations():
        values = sorted({v for _, v in rel.facts})
        for s, v in rel.facts:
            for wording in rel.suite_ask:
                wrong = rng.sample([x for x in values if x != v], min(choices - 1, len(values) - 1))
                opts = [v, *wrong]
                rng.shuffle(opts)
                question = capitalised(wording.format(**_slots(s, v, rng)))
                items.append(
                    {
                        "domain": rel.name,
                        "question": question,
                        "choices": opts,
                        "answer": opts.index(v),
                        "group": f"{rel.name}:{s}",
                    }
                )
    return items
