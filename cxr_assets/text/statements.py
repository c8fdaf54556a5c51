"""Finding-statement pairs: a report and a short statement of one finding it asserts or denies.

A report encoder is queried with short finding statements (zero-shot labels, `cxr search "large
right pleural effusion"`), not only with other reports. Report-to-report pairs never show the
encoder such a query, so this task adds one pair per training report: the report and a statement
of one observation the project labeler found in it, asserted when the report asserts it and
denied when the report denies it; the hard negative is the same statement with the opposite
polarity, and the pair is scored against that negative only (contrastive.own_pair_mask), so the
loss can only be lowered by reading the negation.

The templates deliberately differ from the evaluation's zero-shot prompts ("There is X." /
"There is no X."), so the zero-shot row measures generalisation, not a memorised sentence.
"""

from __future__ import annotations

import random

TASK = "finding_statement"
# Parallel templates: index k asserts with POSITIVE_TEMPLATES[k] and denies with
# NEGATIVE_TEMPLATES[k], so a pair and its hard negative differ only in polarity.
POSITIVE_TEMPLATES = ("{X}.", "Evidence of {x}.", "{X} is seen.", "{X} is present.",
                      "Findings consistent with {x}.")
NEGATIVE_TEMPLATES = ("No {x}.", "No evidence of {x}.", "{X} is not seen.", "{X} is absent.",
                      "Negative for {x}.")
# Observations whose CheXpert name is no phrase a radiologist writes are left out.
SKIPPED = ("No Finding", "Pleural Other")


def statement(observation: str, present: bool, template: int) -> str:
    """The statement of `observation` (a CheXpert name), asserted or denied, by template index."""
    templates = POSITIVE_TEMPLATES if present else NEGATIVE_TEMPLATES
    phrase = observation.lower()
    text = templates[template % len(templates)]
    return text.format(X=phrase[:1].upper() + phrase[1:], x=phrase)


def finding_statement_pairs(reports: list[str], seed: int, per_report: int = 3
                            ) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """(report, statement) pairs, their opposite-polarity hard negatives and task names.

    Up to `per_report` pairs per report, one per observation it mentions as present or absent
    (uncertain mentions are skipped: neither polarity is right); observations and templates are
    drawn with a generator seeded by `seed` and the report's position, so pairs are reproducible.
    """
    from cxr_assets.reports.labeler import CHEXPERT_OBSERVATIONS, NEGATIVE, POSITIVE, label_reports

    observations = [o for o in CHEXPERT_OBSERVATIONS if o not in SKIPPED]
    table = label_reports(list(reports))
    pairs: list[tuple[str, str]] = []
    negatives: list[str] = []
    for index, (report, row) in enumerate(zip(reports, table.iter_rows(named=True))):
        mentioned = [(o, row[o] == POSITIVE) for o in observations if row[o] in (POSITIVE, NEGATIVE)]
        if not mentioned:
            continue
        rng = random.Random(f"{seed}:{index}")
        for observation, present in rng.sample(mentioned, min(per_report, len(mentioned))):
            template = rng.randrange(len(POSITIVE_TEMPLATES))
            pairs.append((report, statement(observation, present, template)))
            negatives.append(statement(observation, not present, template))
    return pairs, negatives, [TASK] * len(pairs)
