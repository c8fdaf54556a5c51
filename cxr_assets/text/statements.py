"""Finding-statement pairs: a report and a short statement of one finding it asserts or denies.

A report encoder is queried with short finding statements (zero-shot labels, `cxr search "large
right pleural effusion"`), not only with other reports. Report-to-report pairs never show the
encoder such a query, so this task adds one pair per training report: the report and a statement
of one observation the project labeler found in it, asserted when the report asserts it and
denied when the report denies it; the hard negative is the same statement with the opposite
polarity, so the loss can only be lowered by reading the negation.

Other reports of the batch are true negatives of a statement only when the labeler says the
statement is false for them: "No pneumothorax." fits most normal reports. `label_aware_mask`
hides every candidate the labeler does not rule out (same polarity, uncertain, or a denial the
report does not mention), so a statement learns to find its reports among the rest, which is how
search and zero-shot labels query the encoder (`contrastive.statement_scoring: label_aware`). The
default, `pair_only`, scores a pair against its own hard negative only (the v2 release's recipe):
40 label-aware steps from v2 left the held-out zero-shot AUC where it was (0.625 -> 0.618).

The templates deliberately differ from the evaluation's zero-shot prompts ("There is X." /
"There is no X."), so the zero-shot row measures generalisation, not a memorised sentence.

Phrasing (`contrastive.statement_phrasing`): a statement names its finding by the CheXpert name
("Lung lesion.", `observation`), by the report's own words with the modifiers written just before
them ("Right upper lobe nodule.", "Small left pleural effusion.", `report_words`), or both (one
pair each). CheXpert names are not what reports or users write ("nodule", "rib fracture", "PICC
line"): with names only, a search for "pulmonary nodule" or a zero-shot prompt for lung lesion
depends on the encoder already knowing the synonym. A report-words statement is kept only when
the labeler reads it back as the observation and polarity it was made from (and its hard negative
as the opposite), so every pair says what its label says.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from typing import Any

TASK = "finding_statement"
# Parallel templates: index k asserts with POSITIVE_TEMPLATES[k] and denies with
# NEGATIVE_TEMPLATES[k], so a pair and its hard negative differ only in polarity.
POSITIVE_TEMPLATES = ("{X}.", "Evidence of {x}.", "{X} is seen.", "{X} is present.",
                      "Findings consistent with {x}.")
NEGATIVE_TEMPLATES = ("No {x}.", "No evidence of {x}.", "{X} is not seen.", "{X} is absent.",
                      "Negative for {x}.")
# Observations whose CheXpert name is no phrase a radiologist writes are left out.
SKIPPED = ("No Finding", "Pleural Other")
PHRASINGS = ("observation", "report_words", "both")
# "No Finding" has its own parallel templates (its CheXpert name is no sentence). Stated for the
# reports the labeler finds normal, it puts short normal reports ("No active disease."), which
# mention no observation, into the statement batches: without them nothing teaches a finding
# query to rank them low, and they become hubs a short query lands on.
NO_FINDING = "No Finding"
NORMAL_TEMPLATES = ("No acute cardiopulmonary abnormality.", "Normal chest radiograph.",
                    "No acute findings.", "Normal chest x-ray.", "No active disease in the chest.")
ABNORMAL_TEMPLATES = ("Acute cardiopulmonary abnormality.", "Abnormal chest radiograph.",
                      "Acute findings.", "Abnormal chest x-ray.", "Active disease in the chest.")
# Words that end a mention's modifiers (walking back from the mention): articles, verbs,
# prepositions, conjunctions and negation or hedge cues belong to the sentence, not the finding.
_STOP_WORDS = frozenset((
    "a", "an", "the", "there", "is", "are", "was", "were", "be", "been", "being", "has",
    "have", "had", "of", "with", "and", "or", "no", "not", "without", "any", "in", "on", "at",
    "to", "for", "from", "by", "as", "seen", "noted", "again", "this", "that", "these",
    "those", "which", "who", "may", "might", "could", "possible", "possibly", "probable",
    "probably", "likely", "suggest", "suggests", "suggesting", "concerning", "consistent",
    "mm", "cm", "xxxx", "evidence", "negative", "free", "clear", "than", "also", "still",
    "now", "persistent", "persists", "remains", "previously",
))
_MAX_MODIFIERS = 4
_WORD = re.compile(r"[A-Za-z][A-Za-z-]*$")


def statement(observation: str, present: bool, template: int) -> str:
    """The statement of `observation` (a CheXpert name), asserted or denied, by template index."""
    if observation == NO_FINDING:
        templates = NORMAL_TEMPLATES if present else ABNORMAL_TEMPLATES
        return templates[template % len(templates)]
    return _format(observation.lower(), present, template)


def _format(phrase: str, present: bool, template: int) -> str:
    templates = POSITIVE_TEMPLATES if present else NEGATIVE_TEMPLATES
    text = templates[template % len(templates)]
    return text.format(X=phrase[:1].upper() + phrase[1:], x=phrase)


def parse_statement(text: str) -> tuple[str, bool] | None:
    """(observation, present) of a statement written by `statement`, None for any other text."""
    return _STATEMENTS.get(text)


@lru_cache(maxsize=65536)
def statement_fact(text: str) -> tuple[str, bool] | None:
    """(observation, present) of a statement in either phrasing: a template statement by its
    template, any other short text by the labeler when it finds exactly one observation asserted
    or denied in it (None otherwise: then it is no finding statement)."""
    from cxr_assets.reports.labeler import NEGATIVE, POSITIVE, label_text

    fact = _STATEMENTS.get(text)
    if fact is not None:
        return fact
    facts = [(o, v == POSITIVE) for o, v in label_text(text).items()
             if o not in SKIPPED and v in (POSITIVE, NEGATIVE)]
    return facts[0] if len(facts) == 1 else None


def mention_phrase(clause: str, start: int, end: int) -> str:
    """The report's words for the mention clause[start:end]: the matched words with up to four
    modifiers written just before them ("small right pleural effusion"), lower case."""
    before = clause[:start].split()
    modifiers: list[str] = []
    for word in reversed(before):
        word = word.strip(",()\"'")
        if (not _WORD.match(word) or word.lower() in _STOP_WORDS
                or len(modifiers) == _MAX_MODIFIERS):
            break
        modifiers.insert(0, word.lower())
    return " ".join(modifiers + clause[start:end].lower().split())


def _report_words_statement(report: str, observation: str, present: bool, template: int
                            ) -> tuple[str, str] | None:
    """(statement, opposite) in the report's own words for one of its mentions of
    `observation` with this polarity; None when no mention reads back as that fact."""
    from cxr_assets.reports.labeler import NEGATIVE, POSITIVE, iter_mentions

    wanted = POSITIVE if present else NEGATIVE
    for mention in iter_mentions(report):
        if mention.observation != observation or mention.label != wanted or mention.normal:
            continue
        phrase = mention_phrase(mention.clause, mention.start, mention.end)
        if phrase == observation.lower():
            return None  # the same words as the observation phrasing
        texts = [_format(phrase, p, template) for p in (present, not present)]
        if [statement_fact(t) for t in texts] == [(observation, present), (observation, not present)]:
            return texts[0], texts[1]
    return None


def _all_statements() -> dict[str, tuple[str, bool]]:
    from cxr_assets.reports.labeler import CHEXPERT_OBSERVATIONS

    return {statement(o, present, k): (o, present)
            for o in (*(o for o in CHEXPERT_OBSERVATIONS if o not in SKIPPED), NO_FINDING)
            for present in (True, False) for k in range(len(POSITIVE_TEMPLATES))}


def _rules_out(labels: dict, fact: tuple[str, bool] | None) -> bool:
    """Whether a report with these labeler `labels` makes the statement `fact` false (an
    uncertain mention rules out neither polarity)."""
    from cxr_assets.reports.labeler import NEGATIVE, POSITIVE

    if fact is None:
        return True  # not a statement (a report variant): an ordinary in-batch negative
    observation, present = fact
    state = labels.get(observation)
    if present:  # "Effusion is present." is false where the report denies or omits effusion
        return state == NEGATIVE or state is None
    return state == POSITIVE  # "No effusion." is false only where the report asserts it


def label_aware_mask(reports: list[str], candidates: list[str]) -> Any:
    """[B, C] True where candidate j (not i) is a statement the labeler does not rule out for
    report i: hidden from the softmax in both directions, like a second positive would be.

    reports: the B queries of a finding-statement batch; candidates: their B statements, then
    the hard negatives. Query i's own statement (column i) stays visible as its target.
    """
    import torch

    from cxr_assets.reports.labeler import label_text

    labels = [label_text(r) for r in reports]
    facts = [statement_fact(c) for c in candidates]
    return torch.tensor([[j != i and not _rules_out(labels[i], facts[j])
                          for j in range(len(candidates))] for i in range(len(reports))])


def finding_statement_pairs(reports: list[str], seed: int, per_report: int = 3,
                            phrasing: str = "observation", normal: bool = False
                            ) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """(report, statement) pairs, their opposite-polarity hard negatives and task names.

    Up to `per_report` observations per report, among those it mentions as present or absent
    (uncertain mentions are skipped: neither polarity is right), each stated in the `phrasing`
    (one of PHRASINGS; 'both' gives a pair per phrasing); with `normal`, a report the labeler
    finds normal also has "No Finding" among them, always stated with NORMAL_TEMPLATES (against
    ABNORMAL_TEMPLATES); observations and templates are drawn with a generator seeded by `seed`
    and the report's position, so pairs are reproducible.
    """
    from cxr_assets.reports.labeler import CHEXPERT_OBSERVATIONS, NEGATIVE, POSITIVE, label_reports

    if phrasing not in PHRASINGS:
        raise ValueError(f"statement phrasing {phrasing!r} is not one of {PHRASINGS}")
    observations = [o for o in CHEXPERT_OBSERVATIONS if o not in SKIPPED]
    table = label_reports(list(reports))
    pairs: list[tuple[str, str]] = []
    negatives: list[str] = []
    for index, (report, row) in enumerate(zip(reports, table.iter_rows(named=True))):
        mentioned = [(o, row[o] == POSITIVE) for o in observations if row[o] in (POSITIVE, NEGATIVE)]
        if normal and row[NO_FINDING] == POSITIVE:
            mentioned.append((NO_FINDING, True))
        if not mentioned:
            continue
        rng = random.Random(f"{seed}:{index}")
        for observation, present in rng.sample(mentioned, min(per_report, len(mentioned))):
            template = rng.randrange(len(POSITIVE_TEMPLATES))
            if phrasing in ("observation", "both") or observation == NO_FINDING:
                pairs.append((report, statement(observation, present, template)))
                negatives.append(statement(observation, not present, template))
            if phrasing in ("report_words", "both") and observation != NO_FINDING:
                own = _report_words_statement(report, observation, present, template)
                if own is not None:
                    pairs.append((report, own[0]))
                    negatives.append(own[1])
    return pairs, negatives, [TASK] * len(pairs)


_STATEMENTS = _all_statements()
