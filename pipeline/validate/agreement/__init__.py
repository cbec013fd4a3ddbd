"""Inter-annotator agreement (an Enterprise-only feature in Label Studio), for Community projects.

Owns the agreement figures of the validation report: on the category, Fleiss' kappa, Krippendorff's
alpha (nominal) and Light's kappa (mean pairwise Cohen's kappa), with percentile bootstrap intervals
over tasks; on the response, ROUGE-L F1 between annotators' texts; per-annotator figures (agreement
with the winning annotation, quarantine rate by check); and the list of tasks whose annotators
disagree. Everything is a pure function of one long frame, one row per (task_id, annotator), which
`annotations_frame` builds from raw Label Studio task JSON.

Choices made here (each one is tested):
- Fleiss' kappa with a varying number of raters per task uses the usual generalization: each task's
  agreement P_i uses its own rater count n_i, P-bar is their mean over tasks, and the category shares
  p_j pool all ratings. With a constant n it is exactly Fleiss (1971). Krippendorff's alpha is the
  figure made for missing data and varying raters; read it first.
- Only tasks with two or more category labels count (a single label cannot agree or disagree); a
  missing category next to a given one is missing data, not disagreement.
- When every label is the same category, expected agreement is 1 and kappa and alpha are 0/0: both
  are reported as NaN ("undefined"), not as the 1.0 some tools print, so a one-category project
  never looks perfectly reliable.
- Intervals (Fleiss, alpha): percentile bootstrap over tasks. Both figures depend on a task only
  through its label-count vector, so a resample is one multinomial draw over the distinct vectors:
  exact, and 1,000 resamples of 100k tasks take milliseconds. Light's kappa (mean pairwise Cohen's
  kappa over annotator pairs with >= min_pair_overlap shared tasks) is a point value.
- ROUGE-L F1 = 2 LCS / (len_a + len_b) on `str.split()` tokens, case-sensitive (two empty texts: 1.0);
  each text is cut to its first `MAX_LCS_TOKENS` tokens (longer texts are rare, LCS cost grows with
  the product of lengths). A task's response agreement is the mean over its annotator pairs, and it
  disagrees when that mean is below the threshold.

numpy/pandas only, plus pyarrow.compute for splitting words (as `near_duplicates` does).

Modules: `frame` (the long frame from raw tasks, checked and coded), `category` (kappa, alpha, intervals),
`responses` (ROUGE-L), `annotators` (per-annotator figures, disagreements), `report` (all of it at once).
"""

from pipeline.validate.agreement.annotators import annotator_stats, disagreements, quarantine_by_check
from pipeline.validate.agreement.category import (
    Estimate,
    bootstrap_agreement,
    category_table,
    cohen_kappa,
    coincidence_matrix,
    fleiss_kappa,
    krippendorff_alpha,
    pairwise_cohen,
)
from pipeline.validate.agreement.frame import annotations_frame, check_frame
from pipeline.validate.agreement.report import METRIC_PREFIX, AgreementReport, agreement_report, pull_agreement
from pipeline.validate.agreement.responses import (
    MAX_LCS_TOKENS,
    lcs_length,
    response_pairs,
    rouge_l_f1,
    rouge_l_f1_batch,
)

__all__ = [
    "MAX_LCS_TOKENS",
    "METRIC_PREFIX",
    "AgreementReport",
    "Estimate",
    "agreement_report",
    "annotations_frame",
    "annotator_stats",
    "bootstrap_agreement",
    "category_table",
    "check_frame",
    "cohen_kappa",
    "coincidence_matrix",
    "disagreements",
    "fleiss_kappa",
    "krippendorff_alpha",
    "lcs_length",
    "pairwise_cohen",
    "pull_agreement",
    "quarantine_by_check",
    "response_pairs",
    "rouge_l_f1",
    "rouge_l_f1_batch",
]
