"""The general English corpus the demo base is pretrained on, generated here (no download).

Two parts, both deterministic: plain texts (the general suite's own texts and answers, repeated so that
the base knows them by heart, plus sentences generated from small tables of everyday facts and nature
words) and question/answer dialogues that teach the base the chat template, the habit of answering in a
sentence and everyday travel English (times, fares, minutes, weekdays) on an inland bus and train
network. None of the ferry desk's data is here (no Brightwater port, vessel, timetable, fare or policy):
the adapter must learn the ferry desk from the annotated data alone, and the forgetting check needs a
general suite the base knows (every suite question is answered in this corpus).
"""

from __future__ import annotations

import random
from functools import lru_cache

from pipeline.demo.general_world import add_minutes, join_and, money
from pipeline.evaluate.general_suite import load_general_suite

Dialogue = tuple[str, str]

NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]

# fmt: off
ANIMALS: tuple[tuple[str, str, str, str], ...] = (  # (animal, sound or habit, home, food)
    ("cow", "says moo", "on a farm", "grass"), ("dog", "barks", "in a house", "meat and biscuits"),
    ("cat", "purrs", "in a house", "fish and meat"), ("sheep", "says baa", "in a field", "grass"),
    ("duck", "quacks", "on a pond", "seeds and weeds"), ("horse", "neighs", "in a stable", "hay and oats"),
    ("owl", "hoots at night", "in a tree", "mice"), ("frog", "croaks", "near a pond", "insects"),
    ("bee", "buzzes", "in a hive", "nectar from flowers"), ("rabbit", "hops", "in a burrow", "carrots and grass"),
    ("tortoise", "carries a shell on its back", "in a garden", "leaves"), ("fish", "swims", "in water", "small plants"),
    ("blue whale", "is the largest animal", "in the ocean", "tiny krill"), ("kangaroo", "hops on strong legs", "in Australia", "grass"),
    ("lion", "roars", "on the grassland", "meat"), ("squirrel", "stores nuts", "in a tree", "nuts and seeds"),
)
FOODS: tuple[tuple[str, str], ...] = (  # (food, what it is)
    ("a carrot", "a vegetable"), ("an apple", "a fruit"), ("a potato", "a vegetable"), ("a banana", "a fruit"),
    ("rice", "a grain"), ("bread", "baked from flour and water"), ("cheese", "made from milk"),
    ("butter", "made from cream"), ("an egg", "laid by a chicken"), ("honey", "made by bees"),
    ("a tomato", "a fruit that is cooked like a vegetable"), ("soup", "eaten with a spoon"),
)
PLACES: tuple[tuple[str, str, str], ...] = (  # (country, capital, continent)
    ("Japan", "Tokyo", "Asia"), ("France", "Paris", "Europe"), ("Egypt", "Cairo", "Africa"),
    ("Italy", "Rome", "Europe"), ("Kenya", "Nairobi", "Africa"), ("Canada", "Ottawa", "North America"),
    ("Peru", "Lima", "South America"), ("India", "New Delhi", "Asia"), ("Spain", "Madrid", "Europe"),
    ("Australia", "Canberra", "Australia"), ("Mexico", "Mexico City", "North America"), ("Norway", "Oslo", "Europe"),
)
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WEATHER: tuple[str, ...] = (
    "Rain falls from clouds as drops of water.", "In freezing weather white flakes of snow fall from the clouds.",
    "Summer is usually the hottest season and winter the coldest.", "You need sunlight and raindrops to see a rainbow.",
    "Frost forms on the grass on freezing clear mornings.", "Thunder follows lightning during a storm.",
    "Fog is a cloud that touches the ground.", "Wind is moving air.", "Leaves fall from the trees in autumn.",
    "Flowers open in the spring when the days grow warmer.",
)
HOUSEHOLD: tuple[str, ...] = (
    "People usually wash the dishes in the sink.", "When a smoke alarm sounds, leave the building at once.",
    "A pillow is for resting your head.", "Milk is kept in the fridge so that it stays fresh.",
    "A washing machine washes clothes and a dryer dries them.", "A kettle boils water for tea.",
    "A refrigerator keeps food cold.", "An oven bakes bread and cakes.", "A broom sweeps the floor.",
    "Keys open the front door.", "A lamp gives light at night.", "Towels hang in the bathroom.",
)
HEALTH: tuple[str, ...] = (
    "Wash your hands before eating.", "Sunscreen helps protect your skin from sunburn.",
    "Cover your mouth and nose when you sneeze.", "Put a plaster on a small clean cut.",
    "Brush your teeth twice a day.", "Drink water when you are thirsty.", "Sleep helps the body rest.",
    "Fruit and vegetables are good for you.", "A short walk every day keeps you fit.",
)
# Service desks that are not ferries: they teach times, prices and the shape of a helpful answer.
DESKS: tuple[tuple[str, str, str, int], ...] = (  # (place, opens, closes, ticket cents)
    ("the city library", "09:00", "17:30", 0), ("the swimming pool", "07:00", "21:00", 450),
    ("the science museum", "10:00", "18:00", 1200), ("the town cinema", "12:30", "23:00", 900),
    ("the art gallery", "10:30", "17:00", 750), ("the sports centre", "06:30", "22:00", 500),
    ("the zoo", "09:30", "18:30", 1800), ("the botanic garden", "08:00", "19:00", 600),
    ("the castle", "10:00", "16:30", 1350), ("the bowling alley", "11:00", "23:30", 850),
)
# An inland network (no water, no Brightwater names): every line is (mode, town, town, minutes, adult cents,
# departures from the first town, days).
TOWNS = ("Ashford Green", "Millbrook", "Oakridge", "Fernley", "Stonebridge", "Willowdale", "Hollins Cross", "Redcliffe")
LINES: tuple[tuple[str, str, str, int, int, tuple[str, ...], str], ...] = (
    ("bus", "Ashford Green", "Millbrook", 20, 250, ("07:10", "09:40", "13:15", "17:50"), "every day"),
    ("train", "Ashford Green", "Stonebridge", 35, 640, ("06:50", "08:20", "12:00", "16:30", "19:45"), "every day"),
    ("coach", "Millbrook", "Redcliffe", 80, 1260, ("08:00", "14:30"), "Monday to Saturday"),
    ("tram", "Oakridge", "Fernley", 15, 320, ("07:00", "07:30", "08:15", "18:40"), "Monday to Friday"),
    ("bus", "Fernley", "Willowdale", 40, 480, ("09:15", "12:45", "16:20"), "Monday to Saturday"),
    ("train", "Stonebridge", "Hollins Cross", 50, 890, ("06:30", "10:10", "15:40", "20:05"), "every day"),
    ("coach", "Willowdale", "Redcliffe", 65, 1025, ("10:00", "17:15"), "every day"),
    ("bus", "Hollins Cross", "Oakridge", 25, 575, ("08:45", "11:30", "14:10", "18:20"), "Monday to Friday"),
)
# Desk questions anyone might ask about travel in general: the words of the trade, none of the ferry desk's answers.
TRAVEL_WORDS: tuple[Dialogue, ...] = (
    ("Can I get my money back for a ticket?", "Most tickets can be refunded before the journey, sometimes minus a small fee."),
    ("What should I do if I lose my phone on a bus?", "Call the lost property office and describe the phone. Valuables are kept safely for a while."),
    ("Can I take a bicycle on the train?", "Yes, most trains carry bicycles, but some charge a small fee."),
    ("Can a wheelchair user travel by train?", "Yes. Staff can help you on board if you book assistance a day ahead."),
    ("Do children pay full fare?", "No, children usually pay half fare and babies travel free."),
    ("Can my guide dog come with me?", "Yes, assistance dogs travel free of charge."),
    ("What is a return ticket?", "A return ticket covers the journey there and back again."),
    ("What is a single ticket?", "A single ticket covers a journey in one direction only."),
    ("What is a timetable?", "A timetable lists the times when buses, trains and boats depart and arrive."),
    ("What is a hearing loop?", "A hearing loop sends sound straight to hearing aids."),
    ("What does step-free mean?", "Step-free means you can get in without any stairs or steps."),
    ("What is a mobility scooter?", "A mobility scooter is a small electric vehicle for people who find walking hard."),
    ("What is lost property?", "Lost property is things that people have left behind, kept until the owner claims them."),
    ("What is a carer?", "A carer is a person who looks after someone who needs help."),
    ("Where can I buy a ticket?", "You can buy a ticket at the ticket desk, from a machine or online."),
    ("What is a harbour?", "A harbour is a sheltered place where boats and ships stay safely."),
    ("What is a quay?", "A quay is a stone platform beside the water where boats load and unload."),
    ("What is a deck?", "A deck is a floor of a ship or a boat."),
    ("What is an island?", "An island is land with water all around it. A small island is sometimes called an isle."),
    ("What is a vessel?", "A vessel is a ship or a boat."),
    ("What is a slipway?", "A slipway is a ramp that slopes down into the water."),
    ("What is a lift?", "A lift carries people up and down between the floors of a building."),
    ("What is a ramp?", "A ramp is a slope that joins two levels, used instead of steps."),
)
# Nature words that also make up place and boat names (gull, haven, heron, wren, moor, crag, ...).
NATURE: tuple[str, ...] = (
    "The heron stands very still in shallow water and waits for fish.",
    "A wren is a tiny brown bird with a loud song. The wren sings from a bush at the edge of the tide.",
    "Gulls nest on the cliffs and follow the boats into the harbour.",
    "A kestrel hovers in the wind over the fields and drops on a mouse.",
    "The skua is a dark seabird that chases other birds to steal their food.",
    "The little auk is a small black and white seabird of the cold north.",
    "Brambles grow in the hedges and give blackberries in late summer.",
    "Alder trees grow by rivers and lakes, where the ground is wet.",
    "A moor is wide open land covered with heather and grass.",
    "A crag is a steep rough rock on the side of a hill.",
    "A skerry is a small rocky island in the sea.",
    "A mere is a small lake, and salt is left behind when sea water dries in the sun.",
    "A lantern is a lamp in a case, carried to light the way at night.",
    "A point is a narrow piece of land that reaches out into the sea.",
    "A haven is a safe place, and a harbour is a haven for boats.",
    "A marrow is a large green vegetable, a bit like a cucumber.",
    "The star shone over the bay, and the tide came in over the sand.",
    "A lass is an old word for a girl, and a star shines in the night sky.",
    "Boats with sails cross the bay when the wind is right.",
    "The crossing from one side of the lake to the other takes about ten minutes by rowing boat.",
)
# fmt: on
# The suite's texts and answers are repeated so that the base knows them by heart: the forgetting check
# then measures knowledge the adapter could lose (base accuracy near 100%, far above chance).
SUITE_REPEATS = 8


def _suite_dialogues() -> list[Dialogue]:
    suite = load_general_suite()
    out = []
    for item in suite.mc_items:
        answer = item.choices[item.answer]
        out.append((item.question, f"{answer}."))
    return out


def _generated_dialogues() -> list[Dialogue]:
    out: list[Dialogue] = []
    for animal, habit, home, food in ANIMALS:
        out += [
            (f"What does a {animal} eat?", f"A {animal} eats {food}."),
            (f"Where does a {animal} live?", f"A {animal} lives {home}."),
            (f"Tell me about the {animal}.", f"The {animal} {habit}. It lives {home} and eats {food}."),
        ]
    for food, what in FOODS:
        out.append((f"What is {food}?", f"{food[0].upper()}{food[1:]} is {what}."))
    for country, capital, continent in PLACES:
        out += [
            (f"What is the capital of {country}?", f"The capital of {country} is {capital}."),
            (f"On which continent is {country}?", f"{country} is in {continent}."),
        ]
    out += sum_dialogues()
    for i, month in enumerate(MONTHS):
        out.append((f"Which month comes after {month}?", f"{MONTHS[(i + 1) % 12]} comes after {month}."))
    for i, day in enumerate(WEEKDAYS):
        out.append((f"What day comes after {day}?", f"{WEEKDAYS[(i + 1) % 7]} comes after {day}."))
    return out + desk_dialogues()


def sum_dialogues() -> list[Dialogue]:
    """Small sums asked in words, answered in digits (both demo bases' corpora)."""
    return [
        (f"What is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}?", f"{a} plus {b} is {a + b}.")
        for a in range(1, 11)
        for b in range(1, 11)
        if a + b <= 20
    ]


def desk_dialogues() -> list[Dialogue]:
    """Opening hours and ticket prices of the inland attractions (both demo bases' corpora)."""
    out: list[Dialogue] = []
    for place, opens, closes, cents in DESKS:
        price = "Entry is free." if cents == 0 else f"An adult ticket costs {money(cents)}."
        out += [
            (f"What time does {place} open?", f"{place[0].upper()}{place[1:]} opens at {opens} every day."),
            (f"When does {place} close?", f"{place[0].upper()}{place[1:]} closes at {closes}."),
            (f"How much is a ticket for {place}?", f"{price} Children under 5 go in free."),
            (
                f"What are the opening hours of {place}?",
                f"{place[0].upper()}{place[1:]} is open from {opens} to {closes}.",
            ),
        ]
    return out


def _travel_dialogues() -> list[Dialogue]:
    """Timetable, fare and journey-time questions about the inland network, in both directions."""
    out: list[Dialogue] = []
    for mode, a, b, mins, cents, deps, days in LINES:
        back = tuple(add_minutes(t, mins + 10) for t in deps)
        for o, d, times in ((a, b, deps), (b, a, back)):
            sundays = "Yes, it runs every day, Sundays included." if days == "every day" else f"No, it runs {days}."
            out += [
                (f"When does the {mode} from {o} to {d} leave?", f"The {mode} to {d} leaves {o} at {join_and(times)}."),
                (
                    f"How long does the {mode} take from {o} to {d}?",
                    f"The journey from {o} to {d} takes {mins} minutes by {mode}.",
                ),
                (
                    f"How much is a {mode} ticket from {o} to {d}?",
                    f"A single ticket from {o} to {d} costs {money(cents)} for an adult and "
                    f"{money(cents // 2)} for a child.",
                ),
                (f"What is the earliest {mode} to {d}?", f"The earliest {mode} from {o} to {d} departs at {times[0]}."),
                (
                    f"What time is the last {mode} home from {o}?",
                    f"The last {mode} from {o} leaves at {times[-1]} and gets to {d} at {add_minutes(times[-1], mins)}.",
                ),
                (f"Does the {mode} from {o} to {d} run on Sundays?", sundays),
            ]
    return out


def _generated_texts() -> list[str]:
    rng = random.Random(0)
    out: list[str] = []
    animals = list(ANIMALS)
    for _ in range(40):
        rng.shuffle(animals)
        out.append(" ".join(f"The {a} {h} and lives {w}." for a, h, w, _ in animals[:4]))
    for _ in range(30):
        out.append(" ".join(rng.sample(WEATHER, 4)))
        out.append(" ".join(rng.sample(HOUSEHOLD, 4)))
        out.append(" ".join(rng.sample(HEALTH, 3)))
    for country, capital, continent in PLACES:
        out.append(f"{capital} is the capital of {country}, a country in {continent}.")
    out.append("The Pacific is the largest ocean. A compass needle points north.")
    out.append("A week has seven days, an hour has sixty minutes and a century has one hundred years.")
    out.append("A dozen eggs is twelve eggs. February has the fewest days of any month.")
    for place, opens, closes, cents in DESKS:
        price = "entry is free" if cents == 0 else f"a ticket costs {money(cents)}"
        out.append(f"On {rng.choice(WEEKDAYS)} {place} opens at {opens} and closes at {closes}, and {price}.")
    return out


@lru_cache(maxsize=1)
def general_dialogues() -> tuple[Dialogue, ...]:
    """Question/answer pairs about everyday things (general suite questions included), in a fixed order."""
    return tuple(_suite_dialogues() + _generated_dialogues() + _travel_dialogues() + list(TRAVEL_WORDS))


@lru_cache(maxsize=1)
def general_texts() -> tuple[str, ...]:
    """Plain general English: the suite's texts and answers (repeated) plus generated sentences, in a fixed order."""
    suite = load_general_suite()
    qa = [f"Question: {item.question}\nAnswer: {item.choices[item.answer]}" for item in suite.mc_items]
    return tuple((list(suite.texts) + qa) * SUITE_REPEATS + _generated_texts() + list(NATURE))
