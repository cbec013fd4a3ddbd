"""The general English corpus the demo base is pretrained on, generated here (no download).

Two parts, both deterministic: plain texts (the general suite's own texts and answers, plus sentences
generated from small tables of everyday facts) and question/answer dialogues that teach the base the
chat template and the habit of answering in a sentence. Nothing here mentions ferries, ports, routes or
the Brightwater tables: the adapter must learn the ferry desk from the annotated data alone, and the
forgetting check needs a general suite the base knows (every suite question is answered in this corpus).
"""

from __future__ import annotations

import random
from functools import lru_cache

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
# fmt: on


def _money(cents: int) -> str:
    return f"${cents // 100}.{cents % 100:02d}"


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
    for a in range(1, 11):
        for b in range(1, 11):
            if a + b <= 20:
                out.append((f"What is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}?", f"{a} plus {b} is {a + b}."))
    for i, month in enumerate(MONTHS):
        out.append((f"Which month comes after {month}?", f"{MONTHS[(i + 1) % 12]} comes after {month}."))
    for i, day in enumerate(WEEKDAYS):
        out.append((f"What day comes after {day}?", f"{WEEKDAYS[(i + 1) % 7]} comes after {day}."))
    for place, opens, closes, cents in DESKS:
        price = "Entry is free." if cents == 0 else f"An adult ticket costs {_money(cents)}."
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
        price = "entry is free" if cents == 0 else f"a ticket costs {_money(cents)}"
        out.append(f"On {rng.choice(WEEKDAYS)} {place} opens at {opens} and closes at {closes}, and {price}.")
    return out


@lru_cache(maxsize=1)
def general_dialogues() -> tuple[Dialogue, ...]:
    """Question/answer pairs about everyday things (general suite questions included), in a fixed order."""
    return tuple(_suite_dialogues() + _generated_dialogues())


@lru_cache(maxsize=1)
def general_texts() -> tuple[str, ...]:
    """Plain general English: the suite's texts and answers plus generated sentences, in a fixed order."""
    suite = load_general_suite()
    qa = [f"Question: {item.question}\nAnswer: {item.choices[item.answer]}" for item in suite.mc_items]
    return tuple(list(suite.texts) + qa + _generated_texts())
