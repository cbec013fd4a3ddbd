"""Tests for inter-annotator agreement (pipeline/validate/agreement/).

Every figure is checked against a value computed by hand (shown in the comments) or a textbook example.
"""

from __future__ import annotations

import math
import random
import re
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.validate import agreement as ag
from pipeline.validate.agreement import category

# ----------------------------------------------------------------------------------------- helpers


def frame(rows: list[tuple[Any, ...]], **extra: list[Any]) -> pd.DataFrame:
    """(task_id, annotator, category, response) rows as the long annotation frame."""
    out = pd.DataFrame(rows, columns=["task_id", "annotator", "category", "response"])
    for col in ("annotator", "category", "response"):
        out[col] = out[col].astype(object)
    for name, values in extra.items():
        out[name] = values
    return out


def dp_lcs(a: list[str], b: list[str]) -> int:
    """The textbook O(len(a) len(b)) dynamic program."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: nominal data, 4 observers,
# 12 units, missing values ("." below is None). Published result: alpha = 0.743.
KRIPPENDORFF = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
}


def krippendorff_frame() -> pd.DataFrame:
    rows = [
        (unit + 1, coder, str(value), None)
        for coder, values in KRIPPENDORFF.items()
        for unit, value in enumerate(values)
        if value is not None
    ]
    return frame(rows)


# Disagreement fixture: hand-computed similarities and reasons in test_disagreements_exact.
DISAGREE_ROWS = [
    (1, "alice", "billing", "Refunds take five days."),
    (1, "bob", "billing", "Refunds take five days."),
    (2, "alice", "billing", "Call the desk."),
    (2, "bob", "refund", "Call the desk."),
    (3, "alice", "billing", "Yes you can board early"),
    (3, "bob", "billing", "No"),
    (4, "alice", "billing", "a b c d"),
    (4, "bob", "refund", "a x y z"),
    (4, "carol", "billing", "a b c d"),
    (5, "alice", "billing", "alone"),
    (6, "alice", "billing", "same text"),
    (6, "bob", None, "same text"),
    (7, "alice", None, None),
    (7, "bob", "refund", "x"),
    (8, "alice", "refund", "one two three four"),
    (8, "bob", "tickets", "five six seven eight"),
]
# winner per task: 1 alice, 2 bob, 3 alice, 4 carol, 5 alice, 6 alice, 7 bob, 8 alice
DISAGREE_WINNER = [
    True,
    False,
    False,
    True,
    True,
    False,
    False,
    False,
    True,
    True,
    True,
    False,
    False,
    True,
    True,
    False,
]


def random_frame(n_tasks: int, seed: int, agree: float = 0.7) -> pd.DataFrame:
    """n_tasks x 3 annotators (of 5), 4 categories, each label kept with probability `agree`."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(n_tasks):
        truth = int(rng.integers(0, 4))
        for who in rng.choice(5, 3, replace=False):
            cat = truth if rng.random() < agree else int(rng.integers(0, 4))
            rows.append((t + 1, f"ann{who}", f"c{cat}", f"answer {t} from {who} with shared words"))
    return frame(rows)


# ------------------------------------------------------------------------------------ category math


def test_fleiss_kappa_wikipedia_example() -> None:
    # 10 subjects, 14 raters, 5 categories (Wikipedia "Fleiss' kappa" worked example, kappa = 0.210).
    # sum_i sum_j n_ij^2 = 828, so sum_i P_i = (828 - 140) / (14 * 13) and P-bar = 688 / 1820;
    # column sums 20, 28, 39, 21, 32 of 140 give P_e = 4170 / 19600; kappa = 4211 / 20059.
    table = np.array(
        [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ]
    )
    assert ag.fleiss_kappa(table) == pytest.approx(4211 / 20059, abs=1e-6)
    assert round(ag.fleiss_kappa(table), 3) == 0.210


def test_fleiss_kappa_varying_raters_by_hand() -> None:
    # rows [2, 0], [1, 1], [0, 3]: P_i = 1, 0, 1 -> P-bar = 2/3; n_c = 3, 4 of 7 -> P_e = 25/49;
    # kappa = (2/3 - 25/49) / (24/49) = 23/72. A task with one label ([1, 0]) is left out.
    assert ag.fleiss_kappa(np.array([[2, 0], [1, 1], [0, 3], [1, 0]])) == pytest.approx(23 / 72, abs=1e-9)


def test_krippendorff_alpha_textbook_example_with_missing_values() -> None:
    table = ag.category_table(krippendorff_frame())
    assert table.shape == (12, 5)
    o = ag.coincidence_matrix(table)
    # The paper's coincidence matrix: first row 7, 4/3, 1/3, 1/3, 0; diagonal 7, 10, 8, 4, 3; margins
    # n_c = 9, 13, 10, 5, 3 (n = 40; unit 12 holds one value and is unpairable).
    np.testing.assert_allclose(o[0], [7, 4 / 3, 1 / 3, 1 / 3, 0], atol=1e-9)
    np.testing.assert_allclose(np.diag(o), [7, 10, 8, 4, 3], atol=1e-9)
    np.testing.assert_allclose(o.sum(axis=1), [9, 13, 10, 5, 3], atol=1e-9)
    # alpha = 1 - (n - 1) (n - sum o_cc) / (n^2 - sum n_c^2) = 1 - 39 * 8 / (1600 - 384) = 113/152 = 0.743
    alpha = ag.krippendorff_alpha(table)
    assert alpha == pytest.approx(113 / 152, abs=1e-6)
    assert round(alpha, 3) == 0.743


def test_cohen_kappa_two_by_two() -> None:
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15. p_o = 35/50 = 0.7;
    # A says yes 25/50, B 30/50: p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4.
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert ag.cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-9)


def test_pairwise_cohen_on_two_rater_frame_is_cohens_kappa() -> None:
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    rows = [(i, "zed", a[i], None) for i in range(50)] + [(i, "amy", b[i], None) for i in range(50)]
    pairs = ag.pairwise_cohen(frame(rows), min_overlap=10)
    assert pairs.to_dict("records") == [
        {
            "annotator_a": "amy",
            "annotator_b": "zed",
            "tasks": 50,
            "agreement": pytest.approx(0.7),
            "kappa": pytest.approx(0.4),
        }
    ]
    assert ag.pairwise_cohen(frame(rows), min_overlap=51).empty
    report = ag.agreement_report(frame(rows), n_boot=50)
    assert report.cohen_kappa_mean == pytest.approx(0.4, abs=1e-9)
    # two raters, no missing data: alpha = 1 - (n-1)/n (1 - Scott's pi) with n = 100; here pi = 0.3939...
    p_e = (55 / 100) ** 2 + (45 / 100) ** 2  # pooled shares: yes 25 + 30 of 100
    scott_pi = (0.7 - p_e) / (1 - p_e)
    assert report.krippendorff_alpha.value == pytest.approx(1 - 99 / 100 * (1 - scott_pi), abs=1e-9)
    assert report.fleiss_kappa.value == pytest.approx(scott_pi, abs=1e-9)  # Fleiss with 2 raters = Scott's pi


def test_one_category_throughout_is_undefined_not_perfect() -> None:
    rows = [(t, who, "billing", None) for t in range(1, 6) for who in ("alice", "bob", "carol")]
    report = ag.agreement_report(frame(rows), n_boot=20, min_pair_overlap=1)
    m = report.metrics()
    for key in ("category/fleiss_kappa", "category/krippendorff_alpha", "category/cohen_kappa_mean"):
        assert math.isnan(m["data/agreement/" + key]), key
    assert math.isnan(m["data/agreement/category/krippendorff_alpha_ci_low"])
    assert m["data/agreement/tasks_multi_annotated"] == 5.0
    assert "| Krippendorff's alpha (category, nominal) | n/a | n/a |" in report.markdown()
    assert math.isnan(ag.cohen_kappa(["x", "x"], ["x", "x"]))


def test_no_multi_annotated_task_reports_zero_and_nan() -> None:
    report = ag.agreement_report(frame([(1, "alice", "a", "x"), (2, "bob", "b", "y")]), n_boot=10)
    m = report.metrics()
    assert m["data/agreement/tasks_multi_annotated"] == 0.0
    assert m["data/agreement/category_tasks"] == 0.0
    assert all(math.isnan(m["data/agreement/" + k]) for k in ("category/fleiss_kappa", "response/rouge_l_mean"))
    assert "agreement cannot be measured" in report.markdown()
    empty = ag.agreement_report(frame([]), n_boot=10)
    assert empty.metrics()["data/agreement/tasks"] == 0.0
    assert empty.disagreements.empty


# ------------------------------------------------------------------------------------------ bootstrap


def test_bootstrap_interval_contains_estimate_and_is_seeded() -> None:
    table = ag.category_table(random_frame(400, seed=3))
    first = ag.bootstrap_agreement(table, n_boot=500, seed=7)
    again = ag.bootstrap_agreement(table, n_boot=500, seed=7)
    other = ag.bootstrap_agreement(table, n_boot=500, seed=8)
    assert first == again
    assert first != other
    for name, est in first.items():
        assert est.ci_low < est.value < est.ci_high, name
        assert est.ci_high - est.ci_low < 0.2, name
    assert first["fleiss_kappa"].value == ag.fleiss_kappa(table)
    assert first["krippendorff_alpha"].value == ag.krippendorff_alpha(table)
    assert math.isnan(ag.bootstrap_agreement(table, n_boot=0)["fleiss_kappa"].ci_low)


def test_bootstrap_replicate_formula_equals_recomputing_on_the_resample() -> None:
    # A resample is a count per distinct task vector; its figures must equal the ones of the explicit table.
    counts = category._counts(ag.category_table(random_frame(200, seed=5)))
    patterns, freq = category._distinct_rows(counts)
    assert freq.sum() == len(counts)
    rng = np.random.default_rng(0)
    for _ in range(5):
        draw = rng.multinomial(len(counts), freq / freq.sum()).astype(np.float64)
        resample = np.repeat(patterns, draw.astype(int), axis=0)
        sums = np.concatenate([[draw.sum()], draw @ category._per_task_stats(patterns)])
        assert float(category._stats_kappa(*sums)) == pytest.approx(ag.fleiss_kappa(resample), abs=1e-12)
        assert float(category._stats_alpha(*sums)) == pytest.approx(ag.krippendorff_alpha(resample), abs=1e-12)


# ------------------------------------------------------------------------------------------- response


def test_rouge_l_hand_example() -> None:
    # the cat sat on the mat / the cat lay on a mat: LCS "the cat on mat" = 4; F1 = 2 * 4 / (6 + 6)
    assert ag.rouge_l_f1("the cat sat on the mat", "the cat lay on a mat") == pytest.approx(2 / 3, abs=1e-9)
    assert ag.rouge_l_f1("", "") == 1.0
    assert ag.rouge_l_f1(" \n ", "") == 1.0  # whitespace only: no tokens either
    assert ag.rouge_l_f1("", "words") == 0.0
    assert ag.rouge_l_f1("Same  text\n", "Same text") == 1.0  # whitespace only separates tokens
    assert ag.rouge_l_f1("Case", "case") == 0.0  # case-sensitive
    # tokens are str.split()'s, on the ASCII fast path and on the Unicode one
    for a, b in [("a\tb\x0bc", "a b c"), ("a\u00a0b\u3000c", "a b c"), ("a\x1cb", "a b"), ("\u2003x ", "x")]:
        assert a.split() == b.split()
        assert ag.rouge_l_f1(a, b) == 1.0, (a, b)


def test_lcs_and_batch_rouge_match_the_dynamic_program() -> None:
    rnd = random.Random(0)
    a_texts, b_texts, expected = [], [], []
    for _ in range(400):  # short, exactly 64, just over one word, long; small and large vocabularies
        la, lb = rnd.choice([0, 1, 5, 63, 64, 65, 130]), rnd.choice([0, 1, 7, 64, 70, 140])
        vocab = rnd.choice([2, 4, 40])
        a = [f"w{rnd.randrange(vocab)}" for _ in range(la)]
        b = a[: lb // 2] + [f"w{rnd.randrange(vocab)}" for _ in range(lb - lb // 2)]  # shared prefixes too
        n = dp_lcs(a, b)
        assert ag.lcs_length(a, b) == n
        a_texts.append(" ".join(a))
        b_texts.append(" ".join(b))
        expected.append(1.0 if not a and not b else 2 * n / (len(a) + len(b)))
    np.testing.assert_allclose(ag.rouge_l_f1_batch(a_texts, b_texts), expected, atol=1e-12)


def test_rouge_l_caps_long_texts() -> None:
    head = " ".join(["tok"] * ag.MAX_LCS_TOKENS)
    assert ag.rouge_l_f1(head + " tail one", head + " other end words") == 1.0


def test_response_pairs_and_task_mean() -> None:
    f = frame(DISAGREE_ROWS)
    pairs = ag.response_pairs(f)
    task4 = pairs[pairs["task_id"] == 4].sort_values(["annotator_a", "annotator_b"])
    # "a b c d" vs "a x y z": LCS 1 -> 2/8; identical texts -> 1.0
    assert task4[["annotator_a", "annotator_b"]].values.tolist() == [
        ["alice", "bob"],
        ["alice", "carol"],
        ["bob", "carol"],
    ]
    np.testing.assert_allclose(task4["rouge_l"], [0.25, 1.0, 0.25])
    assert sorted(pairs["task_id"].unique().tolist()) == [1, 2, 3, 4, 6, 8]  # task 7: one response


# ---------------------------------------------------------------------------------- disagreements


def test_disagreements_exact() -> None:
    got = ag.disagreements(frame(DISAGREE_ROWS), response_threshold=0.5)
    # task 3: "Yes you can board early" vs "No" share no token -> 0.0; task 4: (0.25 + 1 + 0.25) / 3 = 0.5,
    # not below 0.5; task 6: a missing category is not a disagreement; task 8: both reasons.
    assert got["task_id"].tolist() == [2, 3, 4, 8]
    assert got["category_differs"].tolist() == [True, False, True, True]
    np.testing.assert_allclose(got["response_rouge_l"], [1.0, 0.0, 0.5, 0.0])
    assert got["reason"].tolist() == [
        "categories differ (alice=billing, bob=refund)",
        "response ROUGE-L 0.00 < 0.50",
        "categories differ (alice=billing, bob=refund, carol=billing)",
        "categories differ (alice=refund, bob=tickets); response ROUGE-L 0.00 < 0.50",
    ]
    assert ag.disagreements(frame(DISAGREE_ROWS), response_threshold=0.6)["task_id"].tolist() == [2, 3, 4, 8]
    assert ag.disagreements(frame(DISAGREE_ROWS), response_threshold=0.0)["task_id"].tolist() == [2, 4, 8]


# ------------------------------------------------------------------------------------- annotators


def test_annotator_stats_and_quarantine_by_check() -> None:
    checks = [None] * len(DISAGREE_ROWS)
    checks[0], checks[4], checks[9], checks[3] = (
        "no_doubled_whitespace",
        "within_max_length",
        "no_doubled_whitespace",
        "no_doubled_whitespace",
    )
    f = frame(DISAGREE_ROWS, winner=DISAGREE_WINNER, failed_check=checks)
    stats = ag.annotator_stats(f).set_index("annotator")
    assert stats["tasks"].to_dict() == {"alice": 8, "bob": 7, "carol": 1}
    assert stats["shared_tasks"].to_dict() == {"alice": 7, "bob": 7, "carol": 1}
    assert stats["wins"].to_dict() == {"alice": 5, "bob": 2, "carol": 1}
    # alice, not winner, both labeled: task 2 (bob: refund, hers billing) no; task 4 (carol: billing) yes -> 1/2.
    # bob: task 1 yes, 3 yes, 4 (carol billing vs refund) no, 8 (alice refund vs tickets) no -> 2/4; task 6 unlabeled.
    assert stats["winner_compared"].to_dict() == {"alice": 2, "bob": 4, "carol": 0}
    assert stats.loc["alice", "winner_agreement"] == 0.5
    assert stats.loc["bob", "winner_agreement"] == 0.5
    assert math.isnan(stats.loc["carol", "winner_agreement"])
    assert stats["quarantine_rate"].to_dict() == pytest.approx({"alice": 3 / 8, "bob": 1 / 7, "carol": 0.0})
    assert stats.loc["carol", "acceptance_rate"] == 1.0
    # carol's only pairs (task 4) score 1.0 with alice and 0.25 with bob
    assert stats.loc["carol", "response_rouge_l"] == pytest.approx(0.625)
    by_check = ag.quarantine_by_check(f)
    assert by_check is not None
    assert by_check.to_dict("records") == [
        {"annotator": "alice", "check": "no_doubled_whitespace", "rows": 2, "rate": 0.25},
        {"annotator": "alice", "check": "within_max_length", "rows": 1, "rate": 0.125},
        {"annotator": "bob", "check": "no_doubled_whitespace", "rows": 1, "rate": pytest.approx(1 / 7)},
    ]
    assert ag.quarantine_by_check(frame(DISAGREE_ROWS)) is None


# -------------------------------------------------------------------------------- frame and report


def result(from_name: str, kind: str, key: str, values: list[Any]) -> dict[str, Any]:
    return {"from_name": from_name, "to_name": "prompt", "type": kind, "value": {key: values}}


def ls_annotation(
    ann_id: int, who: object, updated: str, *results: dict[str, Any], cancelled: bool = False
) -> dict[str, Any]:
    return {
        "id": ann_id,
        "completed_by": who,
        "was_cancelled": cancelled,
        "updated_at": updated,
        "result": list(results),
    }


def test_annotations_frame_from_raw_label_studio_json() -> None:
    tasks = [
        {
            "id": 1,
            "data": {"prompt": "How long do refunds take?"},
            "annotations": [
                ls_annotation(11, 1, "2026-01-01T00:00:00Z", result("category", "choices", "choices", ["billing"]),
                              result("response", "textarea", "text", ["Refund in 5 days"])),
                ls_annotation(12, {"id": 2, "email": "bob@example.org"}, "2026-01-02T00:00:00Z",
                              result("category", "choices", "choices", ["refund"]),
                              result("response", "textarea", "text", ["Refund", "in 5 days"])),
                ls_annotation(13, 3, "2026-01-05T00:00:00Z", result("category", "choices", "choices", ["x"]),
                              cancelled=True),
            ],
        },
        {
            "id": 2,
            "annotations": [
                ls_annotation(21, 1, "2026-01-01T00:00:00Z", result("category", "choices", "choices", ["b", "a"])),
                ls_annotation(22, 1, "2026-01-03T00:00:00Z", result("category", "choices", "choices", ["c"]),
                              result("response", "textarea", "text", ["later"])),
            ],
        },
        {"id": 3, "annotations": [ls_annotation(31, 4, "2026-01-01T00:00:00Z", cancelled=True)]},
        {"id": 4, "annotations": []},
    ]  # fmt: skip
    got = ag.annotations_frame(tasks)
    assert got[["task_id", "annotator", "annotation_id", "category", "response", "winner"]].to_dict("records") == [
        {"task_id": 1, "annotator": "1", "annotation_id": 11, "category": "billing", "response": "Refund in 5 days", "winner": False},
        {"task_id": 1, "annotator": "bob@example.org", "annotation_id": 12, "category": "refund", "response": "Refund\nin 5 days", "winner": True},
        {"task_id": 2, "annotator": "1", "annotation_id": 22, "category": "c", "response": "later", "winner": True},
    ]  # fmt: skip
    # an older, multi-choice annotation of the same annotator would read "a|b"; other from_names
    older = [
        {
            "id": 9,
            "annotations": [
                ls_annotation(91, 1, "2026-01-01T00:00:00Z", result("topic", "choices", "choices", ["b", "a"]))
            ],
        }
    ]
    assert ag.annotations_frame(older, category_name="topic")["category"].tolist() == ["a|b"]
    assert ag.annotations_frame(older)["category"].tolist() == [None]
    report = ag.agreement_report(got, n_boot=10)
    assert report.tasks == 2 and report.tasks_multi_annotated == 1
    with pytest.raises(ValueError, match="task None: a task needs an integer 'id'"):
        ag.annotations_frame([{"annotations": []}])
    with pytest.raises(ValueError, match="task 1: appears more than once"):
        ag.annotations_frame([{"id": 1}, {"id": 1}])
    with pytest.raises(ValueError, match="task 5: annotation 51 has no completed_by"):
        ag.annotations_frame([{"id": 5, "annotations": [ls_annotation(51, None, "2026-01-01T00:00:00Z")]}])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["response"]), r"lacks column\(s\) \['response'\]"),
        (lambda f: f.assign(task_id=[1.5] + [2] * (len(f) - 1)), r"row 0: task_id 1.5 is not an integer"),
        (lambda f: pd.concat([f, f.iloc[[0]]]), r"task 1: annotator 'alice' has 2 rows"),
        (
            lambda f: f.assign(category=[3] + [None] * (len(f) - 1)),
            r"task 1, annotator 'alice': category is float 3.0, not text",
        ),
        (lambda f: f.assign(annotator=[None] + ["x"] * (len(f) - 1)), r"task 1: a row has no annotator"),
        (lambda f: f.assign(winner=[True] * len(f)), r"task 1: 2 annotations are marked winner \(alice, bob\)"),
        (lambda f: f.assign(quarantined=["yes"] * len(f)), r"task 1, annotator 'alice': quarantined is 'yes'"),
    ],
)
def test_check_frame_errors_name_task_annotator_and_field(change: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ag.check_frame(change(frame(DISAGREE_ROWS)))


def test_check_frame_accepts_numeric_annotators_and_leaves_input_alone() -> None:
    f = frame([(1, 7, "a", "x"), (1, 8, "a", "x")])
    checked = ag.check_frame(f)
    assert checked["annotator"].tolist() == ["7", "8"]
    assert f["annotator"].tolist() == [7, 8]


def test_report_metrics_and_markdown_are_plain() -> None:
    f = pd.concat([krippendorff_frame(), frame(DISAGREE_ROWS).assign(task_id=lambda d: d["task_id"] + 100)])
    f["winner"] = f.groupby("task_id").cumcount() == 0
    f["quarantined"] = f.index % 5 == 0
    report = ag.agreement_report(f, n_boot=200, seed=1, min_pair_overlap=2)
    m = report.metrics()
    for key in (
        "tasks_multi_annotated",
        "category/fleiss_kappa",
        "category/fleiss_kappa_ci_low",
        "category/fleiss_kappa_ci_high",
        "category/krippendorff_alpha",
        "category/krippendorff_alpha_ci_low",
        "category/krippendorff_alpha_ci_high",
        "category/cohen_kappa_mean",
        "response/rouge_l_mean",
        "response/rouge_l_p50",
        "disagreement_tasks",
    ):
        assert "data/agreement/" + key in m, key
    assert all(type(v) is float for v in m.values())
    assert m["data/agreement/tasks"] == 20.0
    assert m["data/agreement/response/rouge_l_mean"] == pytest.approx((1 + 1 + 0 + 0.5 + 1 + 0) / 6)
    md = report.markdown()
    assert "np." not in md and "float64" not in md and not re.search(r"\bnan\b", md, re.IGNORECASE)
    assert md.startswith("## Inter-annotator agreement")
    for part in ("### Annotators", "### Quarantine by check", "### Disagreements", "| 102 | categories differ"):
        assert part in md, part
    assert report.disagreements["task_id"].is_monotonic_increasing
