"""Tests for the deterministic Brightwater Ferries sample pairs."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from pipeline.demo import sample_data
from pipeline.demo.sample_data import CATEGORIES, ROUTES, sample_corpus, sample_pairs

SENTENCE_END = re.compile(r"[.!?](?=\s|$)")  # "$9.50" and "09:30" are not sentence ends


@pytest.fixture(scope="module")
def pairs() -> list[dict[str, str]]:
    return sample_pairs()


@pytest.fixture(scope="module")
def all_pairs() -> list[dict[str, str]]:
    return sample_pairs(sample_data.max_pairs())


def test_categories_are_the_public_four() -> None:
    assert CATEGORIES == ("schedules", "tickets", "lost_property", "accessibility")


def test_default_returns_200_pairs_with_expected_keys(pairs: list[dict[str, str]]) -> None:
    assert len(pairs) == 200
    for pair in pairs:
        assert set(pair) == {"prompt", "response", "category"}
        assert pair["category"] in CATEGORIES


def test_deterministic_for_same_seed() -> None:
    assert sample_pairs(200, seed=3) == sample_pairs(200, seed=3)


def test_different_seed_gives_different_sample() -> None:
    assert sample_pairs(200, seed=0) != sample_pairs(200, seed=1)


def test_does_not_touch_global_random_state() -> None:
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    sample_pairs(50, seed=9)
    assert random.random() == expected


def test_categories_balanced(pairs: list[dict[str, str]]) -> None:
    counts = Counter(p["category"] for p in pairs)
    assert set(counts) == set(CATEGORIES)
    for cat, count in counts.items():
        assert 45 <= count <= 55, (cat, count)


@pytest.mark.parametrize("n", [1, 7, 50, 399])
def test_small_and_odd_sizes(n: int) -> None:
    got = sample_pairs(n, seed=5)
    assert len(got) == n
    counts = Counter(p["category"] for p in got)
    per_category = [counts.get(c, 0) for c in CATEGORIES]
    assert max(per_category) - min(per_category) <= 1, per_category


def test_template_capacity_at_least_400() -> None:
    assert sample_data.max_pairs() >= 400
    assert len(sample_pairs(400)) == 400


def test_prompts_unique(all_pairs: list[dict[str, str]]) -> None:
    prompts = [p["prompt"] for p in all_pairs]
    assert len(prompts) == len(set(prompts))


@pytest.mark.parametrize("field", ["prompt", "response"])
def test_text_hygiene(all_pairs: list[dict[str, str]], field: str) -> None:
    for pair in all_pairs:
        text = pair[field]
        assert text, pair
        assert text == text.strip(), text
        assert "  " not in text, text
        assert "{" not in text and "}" not in text, text
        assert not re.search(r"[<>*#`\[\]\n\t]", text), text  # plain text, no markup
        assert len(text.split()) < 60, text


def test_responses_have_one_to_four_sentences(all_pairs: list[dict[str, str]]) -> None:
    for pair in all_pairs:
        assert 1 <= len(SENTENCE_END.findall(pair["response"])) <= 4, pair["response"]


def test_fares_consistent_with_route_table(all_pairs: list[dict[str, str]]) -> None:
    by_prompt = {p["prompt"]: p["response"] for p in all_pairs}
    route = ROUTES[0]
    fare = f"${route.adult_cents // 100}.{route.adult_cents % 100:02d}"
    answer = by_prompt[f"How much is an adult single from {route.a} to {route.b}?"]
    assert fare in answer
    assert route.vessel in by_prompt[f"Which vessel runs the {route.a} to {route.b} sailing?"]


def test_no_car_route_refuses_cars(all_pairs: list[dict[str, str]]) -> None:
    by_prompt = {p["prompt"]: p["response"] for p in all_pairs}
    foot_only = [r for r in ROUTES if r.car_cents is None]
    assert foot_only
    for r in foot_only:
        assert "cannot" in by_prompt[f"Can I take my car from {r.a} to {r.b}, and what does it cost?"]


@pytest.mark.parametrize("bad", [0, -1, 10_000, True, 2.5])
def test_bad_n_raises_value_error_naming_n(bad: object) -> None:
    with pytest.raises(ValueError, match=r"\bn\b.*n="):
        sample_pairs(bad)  # type: ignore[arg-type]


def test_too_large_n_message_names_n() -> None:
    too_many = sample_data.max_pairs() + 1
    with pytest.raises(ValueError, match=rf"n={too_many}"):
        sample_pairs(too_many)


def test_general_corpus_holds_no_ferry_desk_data() -> None:
    """The demo base learns general English only: no Brightwater port, vessel or phone number in its corpus."""
    from pipeline.demo.corpus import general_dialogues, general_texts

    corpus = "\n".join([*general_texts(), *(t for qa in general_dialogues() for t in qa)])
    names = list(sample_data.PORTS) + list(sample_data.VESSELS) + ["Brightwater", "01632 9604", "ferr"]
    assert [n for n in names if n.lower() in corpus.lower()] == []


def test_corpus_holds_pairs_and_general_suite(pairs: list[dict[str, str]]) -> None:
    corpus = sample_corpus()
    assert pairs[0]["prompt"] in corpus
    assert pairs[-1]["response"] in corpus
    assert any("yeast" in text.lower() for text in corpus)  # from the general suite
    assert all(isinstance(t, str) and t for t in corpus)
