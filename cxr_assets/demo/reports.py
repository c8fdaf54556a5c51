"""Synthetic radiology reports written with real-world heterogeneity.

The whole point of the method is that reports differ by institution and author: section
headers, abbreviations, de-identification tokens, hedging, negation and comparison language.
`write_report` renders one study's ground-truth findings in one of four styles while making
sure every positive finding is mentioned (sometimes hedged), so the text really describes
the image the phantom draws.

This module also owns the finding vocabulary shared with the phantom and the generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# --- vocabulary ----------------------------------------------------------------------------

FINDINGS: tuple[str, ...] = (
    "cardiomegaly",
    "pleural_effusion_left",
    "pleural_effusion_right",
    "pneumothorax_left",
    "pneumothorax_right",
    "consolidation",
    "edema",
    "nodule",
    "support_devices",
    "no_finding",
)
LOBES: tuple[str, ...] = ("RUL", "RML", "RLL", "LUL", "LLL")
DEVICES: tuple[str, ...] = ("ett", "ng", "line", "pacemaker")
SEVERITIES: tuple[str, ...] = ("small", "moderate", "large")  # pleural findings
GRADES: tuple[str, ...] = ("mild", "moderate", "severe")  # heart size, edema
STYLES: tuple[str, ...] = ("templated", "impression_only", "narrative", "terse")

LOBE_NAMES = {
    "RUL": "right upper lobe",
    "RML": "right middle lobe",
    "RLL": "right lower lobe",
    "LUL": "left upper lobe",
    "LLL": "left lower lobe",
}


@dataclass(frozen=True)
class StudyFindings:
    """Ground truth of one study. `None` means the finding is absent.

    Sides are the patient's: the phantom draws patient right on the image left (radiological
    convention).
    """

    cardiomegaly: str | None = None  # GRADES
    effusion_left: str | None = None  # SEVERITIES
    effusion_right: str | None = None
    pneumothorax_left: str | None = None
    pneumothorax_right: str | None = None
    consolidation_lobe: str | None = None  # LOBES
    edema: str | None = None  # GRADES
    nodule_lobe: str | None = None  # LOBES
    nodule_mm: int = 0
    devices: tuple[str, ...] = ()  # subset of DEVICES, in DEVICES order

    @property
    def codes(self) -> tuple[str, ...]:
        """Finding codes in FINDINGS order; ('no_finding',) when nothing is present."""
        present = {
            "cardiomegaly": self.cardiomegaly,
            "pleural_effusion_left": self.effusion_left,
            "pleural_effusion_right": self.effusion_right,
            "pneumothorax_left": self.pneumothorax_left,
            "pneumothorax_right": self.pneumothorax_right,
            "consolidation": self.consolidation_lobe,
            "edema": self.edema,
            "nodule": self.nodule_lobe,
            "support_devices": self.devices or None,
        }
        codes = tuple(code for code in FINDINGS if present.get(code))
        return codes or ("no_finding",)

    @property
    def is_normal(self) -> bool:
        return self.codes == ("no_finding",)


# --- house styles --------------------------------------------------------------------------


@dataclass(frozen=True)
class HouseStyle:
    """How one institution writes: section headers, de-id token, boilerplate habits."""

    deid: str = "___"  # "___" like MIMIC-CXR, "XXXX" like IU/OpenI
    # Section header form: colon_upper | colon_newline | dash_title | bare_upper | colon_title
    header: str = "colon_upper"
    numbered_impression: float = 0.3  # probability of a "1. ... 2. ..." impression list
    final_report_banner: bool = True
    optional_sections: float = 0.8  # probability of each INDICATION/TECHNIQUE/COMPARISON line
    signature: float = 0.2  # probability of a trailing attestation line


@dataclass(frozen=True)
class ReportContext:
    """Everything but the findings that a report mentions."""

    style: str  # STYLES
    house: HouseStyle
    views: tuple[str, ...]  # "PA" / "AP" / "LAT" in acquisition order
    sex: str = "F"  # "F" / "M"
    prior: StudyFindings | None = None  # findings of the patient's previous study, if any
    indication: str = "cough"


INDICATIONS = (
    "cough",
    "shortness of breath",
    "fever",
    "chest pain",
    "eval for pneumonia",
    "hypoxia",
    "dyspnea on exertion",
    "preop evaluation",
    "fall",
    "leukocytosis",
    "CHF exacerbation",
    "follow-up",
)
DEVICE_INDICATIONS = ("line placement", "eval ETT placement", "NG tube placement", "intubated")


# --- small helpers -------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _chance(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _sentence(text: str) -> str:
    text = _cap(text.strip())
    return text if text.endswith((".", "?", "!")) else text + "."


_SIDE_ABBR = {"left": ("L", "lt", "left"), "right": ("R", "rt", "right")}
_SEV_ABBR = {
    "small": ("sm", "small", "tiny"),
    "moderate": ("mod", "moderate"),
    "large": ("lg", "large"),
}
_GRADE_ADV = {"mild": "mildly", "moderate": "moderately", "severe": "severely"}


def _pleural_pairs(left: str | None, right: str | None) -> list[tuple[str, str]]:
    """(side words, severity) pairs; bilateral when both sides are present."""
    if left and right:
        worse = max((left, right), key=SEVERITIES.index)
        return [("bilateral", worse)]
    if left:
        return [("left", left)]
    if right:
        return [("right", right)]
    return []


def _change_word(rng: np.random.Generator, was_present: bool, prior_known: bool) -> str:
    """Comparison wording: stable vs new, only when a prior exists."""
    if not prior_known or not _chance(rng, 0.6):
        return ""
    if was_present:
        return _pick(rng, ("unchanged", "stable", "persistent", "similar"))
    return _pick(rng, ("new", "interval development of a", "newly seen"))


# --- per-finding phrase banks --------------------------------------------------------------


def _cardiomegaly(f: StudyFindings, ctx: ReportContext, rng, terse: bool) -> str:
    g = f.cardiomegaly or "mild"
    if terse:
        return _pick(rng, (f"{g} CM", "cardiomegaly", "enlarged heart", f"{g} cardiomeg.", "CM"))
    prior_has = bool(ctx.prior and ctx.prior.cardiomegaly)
    if prior_has and _chance(rng, 0.4):
        return _pick(rng, ("stable cardiomegaly", f"{g} cardiomegaly is unchanged"))
    options = [
        f"the heart is {_GRADE_ADV[g]} enlarged",
        f"{g} cardiomegaly",
        f"there is {g} enlargement of the cardiac silhouette",
        "the cardiac silhouette is enlarged",
        f"heart size is {_GRADE_ADV[g]} enlarged",
    ]
    if "AP" in ctx.views:
        options.append(
            "the cardiac silhouette appears enlarged, possibly accentuated by AP technique"
        )
    return _pick(rng, options)


def _effusion(side: str, sev: str, ctx: ReportContext, rng, terse: bool, was_present: bool) -> str:
    if terse:
        if side == "bilateral":
            return _pick(
                rng, (f"{_pick(rng, _SEV_ABBR[sev])} b/l effs", "b/l pl eff", f"{sev} bilat eff.")
            )
        s = _pick(rng, _SIDE_ABBR[side])
        return _pick(
            rng,
            (
                f"{_pick(rng, _SEV_ABBR[sev])} {s} eff.",
                f"{s} CP angle blunting c/w {_pick(rng, _SEV_ABBR[sev])} eff",
                f"{s} pl eff",
                f"{_pick(rng, _SEV_ABBR[sev])} {s} effusion",
            ),
        )
    change = _change_word(rng, was_present, ctx.prior is not None)
    if side == "bilateral":
        base = _pick(
            rng, (f"{sev} bilateral pleural effusions", f"{sev} pleural effusions bilaterally")
        )
        change = change.removesuffix(" a")  # "interval development of" + plural
        return f"{change} {base}".strip()
    options = [
        f"{sev} {side} pleural effusion",
        f"{sev} {side} pleural effusion with adjacent atelectasis",
    ]
    if "AP" in ctx.views:
        options.append(f"{sev} layering {side} pleural effusion")
    if change:
        return f"{change} {_pick(rng, options)}"
    options += [
        f"there is a {sev} {side} pleural effusion",
        f"blunting of the {side} costophrenic angle, consistent with a {sev} effusion",
    ]
    return _pick(rng, options)


def _pneumothorax(side: str, sev: str, ctx: ReportContext, rng, terse: bool, hedge: bool) -> str:
    if terse:
        s = "b/l" if side == "bilateral" else _pick(rng, _SIDE_ABBR[side])
        t = f"{_pick(rng, _SEV_ABBR[sev])} {s} {_pick(rng, ('PTX', 'apical PTX', 'ptx'))}"
        return f"?{t}" if hedge else t
    if side == "bilateral":
        return f"{sev} bilateral pneumothoraces"
    if hedge:
        return _pick(
            rng,
            (
                f"possible {sev} {side} apical pneumothorax",
                f"a {sev} {side} pneumothorax cannot be excluded",
                f"thin {side} apical pleural line may represent a {sev} pneumothorax",
            ),
        )
    return _pick(
        rng,
        (
            f"{sev} {side} apical pneumothorax",
            f"there is a {sev} {side} pneumothorax with a visible visceral pleural line",
            f"a {sev} {side} pneumothorax is noted",
            f"{sev} {side}-sided pneumothorax",
        ),
    )


def _consolidation(lobe: str, rng, terse: bool, hedge: bool) -> str:
    name = LOBE_NAMES[lobe]
    if terse:
        t = _pick(
            rng,
            (
                f"{lobe} opac ?PNA",
                f"{lobe} consolidation c/w PNA",
                f"{lobe} infiltrate",
                f"{lobe} consol.",
            ),
        )
        return f"?{t}" if hedge and not t.startswith("?") and "?" not in t else t
    if hedge:
        return _pick(
            rng,
            (
                f"patchy opacity in the {name} may represent atelectasis or pneumonia",
                f"possible consolidation in the {name}",
                f"{name} airspace opacity; pneumonia cannot be excluded",
                f"ill-defined opacity at the {name}, likely pneumonia",
            ),
        )
    return _pick(
        rng,
        (
            f"focal consolidation in the {name}",
            f"there is airspace consolidation in the {name}, concerning for pneumonia",
            f"{name} consolidation consistent with pneumonia",
            f"dense airspace opacity in the {name}",
            f"{_cap(name)} pneumonia",
        ),
    )


def _edema(grade: str, rng, terse: bool, hedge: bool) -> str:
    if terse:
        return _pick(
            rng,
            (
                f"{grade} pulm edema",
                "b/l perihilar haze c/w edema",
                "interstitial edema",
                f"{grade} edema",
            ),
        )
    if hedge:
        return _pick(
            rng,
            (
                f"bilateral perihilar haziness, likely {grade} pulmonary edema",
                f"findings may represent {grade} interstitial edema",
            ),
        )
    return _pick(
        rng,
        (
            f"{grade} pulmonary edema",
            f"there is {grade} interstitial pulmonary edema with perihilar haziness",
            f"pulmonary vascular congestion with {grade} edema",
            f"{grade} bilateral perihilar edema",
        ),
    )


def _nodule(lobe: str, mm: int, rng, terse: bool, hedge: bool) -> str:
    name = LOBE_NAMES[lobe]
    if terse:
        return _pick(
            rng, (f"{mm}mm {lobe} nodule", f"? {lobe} nod., rec CT", f"{lobe} nodule {mm} mm")
        )
    if hedge:
        return _pick(
            rng,
            (
                f"possible {mm} mm nodule in the {name}; nonemergent chest CT is recommended",
                f"rounded opacity in the {name} could represent a pulmonary nodule",
            ),
        )
    return _pick(
        rng,
        (
            f"a {mm} mm nodule is seen in the {name}",
            f"{mm} mm nodular opacity in the {name}",
            f"there is a well-circumscribed {mm} mm pulmonary nodule in the {name}",
        ),
    )


def _device(device: str, rng, terse: bool, cm: int) -> str:
    if terse:
        return {
            "ett": _pick(
                rng,
                (f"ETT {cm}cm abv carina", "ETT in good position", f"ETT tip {cm} cm above carina"),
            ),
            "ng": _pick(rng, ("NGT in stomach", "NG tube tip in stomach", "NGT below diaphragm")),
            "line": _pick(
                rng, ("R PICC tip SVC", "R IJ CVC tip cavoatrial jxn", "R PICC in place")
            ),
            "pacemaker": _pick(
                rng, ("s/p pacer, leads intact", "L PPM leads RA/RV", "L pacemaker")
            ),
        }[device]
    return {
        "ett": _pick(
            rng,
            (
                f"endotracheal tube terminates {cm} cm above the carina",
                "the endotracheal tube is in standard position",
                f"ET tube tip is approximately {cm} cm above the carina",
            ),
        ),
        "ng": _pick(
            rng,
            (
                "nasogastric tube courses below the diaphragm with tip in the stomach",
                "enteric tube tip is in the stomach",
                "an NG tube is seen extending into the stomach",
            ),
        ),
        "line": _pick(
            rng,
            (
                "right PICC line tip in the mid SVC",
                "right-sided central venous catheter terminates in the low SVC",
                "a right upper extremity PICC ends at the cavoatrial junction",
            ),
        ),
        "pacemaker": _pick(
            rng,
            (
                "left chest wall pacemaker with leads in the right atrium and right ventricle",
                "dual-chamber pacemaker device with leads in standard position",
                "left-sided pacemaker generator with intact leads",
            ),
        ),
    }[device]


# --- negatives and normal phrases ----------------------------------------------------------


def _negatives(f: StudyFindings, rng, terse: bool) -> list[str]:
    """Mentions of clinically relevant absent findings, as real reports do."""
    out: list[str] = []
    no_eff = not (f.effusion_left or f.effusion_right)
    no_ptx = not (f.pneumothorax_left or f.pneumothorax_right)
    if terse:
        if no_ptx:
            out.append(_pick(rng, ("No PTX", "no ptx", "neg for PTX")))
        if no_eff:
            out.append(_pick(rng, ("no eff", "CP angles sharp", "no pl eff")))
        if not f.consolidation_lobe:
            clear = not (f.edema or f.nodule_lobe or f.pneumothorax_left or f.pneumothorax_right)
            out.append(
                _pick(
                    rng,
                    (
                        "no focal consolidation",
                        "lungs clear" if clear else "no consolidation",
                        "w/o focal consol.",
                    ),
                )
            )
        if not f.cardiomegaly and _chance(rng, 0.7):
            out.append(_pick(rng, ("heart nl", "nl heart size", "nl cardiomediastinal silhouette")))
        if not f.edema and _chance(rng, 0.4):
            out.append("no edema")
        return out
    if not f.cardiomegaly:
        out.append(
            _pick(
                rng,
                (
                    "the cardiomediastinal silhouette is within normal limits",
                    "heart size is normal",
                    "normal heart size and mediastinal contours",
                    "the heart is normal in size",
                    "the cardiac and mediastinal silhouettes are unremarkable",
                ),
            )
        )
    # "Lungs are clear" only when nothing at all is wrong with the lungs.
    lungs_clear = not (f.edema or f.nodule_lobe or f.pneumothorax_left or f.pneumothorax_right)
    if not f.consolidation_lobe:
        options = [
            "no focal consolidation",
            "there is no focal airspace consolidation to suggest pneumonia",
        ]
        if lungs_clear:
            options += ["the lungs are clear without focal consolidation", "lungs are clear"]
        out.append(_pick(rng, options))
    if not f.edema and _chance(rng, 0.6):
        out.append(
            _pick(
                rng,
                (
                    "no pulmonary edema",
                    "there is no evidence of pulmonary vascular congestion",
                    "no edema",
                ),
            )
        )
    if no_eff and no_ptx:
        out.append(
            _pick(
                rng,
                (
                    "no pleural effusion or pneumothorax",
                    "there is no pleural effusion or pneumothorax",
                    "no pneumothorax or pleural effusion is seen",
                ),
            )
        )
    elif no_eff:
        out.append(
            _pick(
                rng,
                ("no pleural effusion", "costophrenic angles are sharp", "no pleural effusions"),
            )
        )
    elif no_ptx:
        out.append(
            _pick(
                rng, ("no pneumothorax", "there is no pneumothorax", "no evidence of pneumothorax")
            )
        )
    if _chance(rng, 0.5):
        out.append(
            _pick(
                rng,
                (
                    "no acute osseous abnormality",
                    "osseous structures are intact",
                    "visualized osseous structures are unremarkable",
                ),
            )
        )
    return out


NORMAL_IMPRESSIONS = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "Normal chest radiograph.",
    "No active disease.",
    "No radiographic evidence of acute cardiopulmonary disease.",
    "No acute intrathoracic process.",
)
TERSE_NORMAL = ("NAD.", "No acute CP process.", "Neg chest.", "nl CXR, no acute dz.")


# --- assembling positives ------------------------------------------------------------------


class _Mention(NamedTuple):
    group: str  # finding family, e.g. "effusion"
    phrase: str  # full wording for a findings section
    short: str  # condensed wording for an impression, same hedging


_SHORT_DEVICE = {
    "ett": "ETT in standard position",
    "ng": "NG tube in the stomach",
    "line": "central venous catheter tip in the SVC",
    "pacemaker": "left-sided pacemaker",
}


def _positives(f: StudyFindings, ctx: ReportContext, rng, terse: bool) -> list[_Mention]:
    """Every positive finding, worded once; hedging is decided here so both wordings agree."""
    prior = ctx.prior
    out: list[_Mention] = []

    def add(group: str, phrase: str, short: str) -> None:
        out.append(_Mention(group, phrase, phrase if terse else short))

    cm = int(rng.integers(3, 7))
    for device in f.devices:
        add("support_devices", _device(device, rng, terse, cm), _SHORT_DEVICE[device])
    if f.consolidation_lobe:
        hedge, name = _chance(rng, 0.3), LOBE_NAMES[f.consolidation_lobe]
        short = _pick(
            rng,
            (f"{name} opacity, possibly pneumonia", f"possible {name} pneumonia")
            if hedge
            else (f"{name} pneumonia", f"{name} consolidation"),
        )
        add("consolidation", _consolidation(f.consolidation_lobe, rng, terse, hedge), short)
    if f.edema:
        hedge = _chance(rng, 0.25)
        short = (
            f"possible {f.edema} pulmonary edema"
            if hedge
            else _pick(rng, (f"{f.edema} pulmonary edema", "pulmonary edema"))
        )
        add("edema", _edema(f.edema, rng, terse, hedge), short)
    if f.nodule_lobe:
        hedge, name = _chance(rng, 0.3), LOBE_NAMES[f.nodule_lobe]
        short = (
            f"possible {name} nodule; CT recommended"
            if hedge
            else f"{f.nodule_mm} mm {name} nodule"
        )
        add("nodule", _nodule(f.nodule_lobe, f.nodule_mm, rng, terse, hedge), short)
    for side, sev in _pleural_pairs(f.effusion_left, f.effusion_right):
        was = bool(prior and (prior.effusion_left or prior.effusion_right))
        short = (
            f"{sev} bilateral pleural effusions"
            if side == "bilateral"
            else f"{sev} {side} pleural effusion"
        )
        add("effusion", _effusion(side, sev, ctx, rng, terse, was), short)
    for side, sev in _pleural_pairs(f.pneumothorax_left, f.pneumothorax_right):
        hedge = _chance(rng, 0.2) and side != "bilateral"
        short = (
            f"possible {side} pneumothorax"
            if hedge
            else (
                "bilateral pneumothoraces" if side == "bilateral" else f"{sev} {side} pneumothorax"
            )
        )
        add("pneumothorax", _pneumothorax(side, sev, ctx, rng, terse, hedge), short)
    if f.cardiomegaly:
        short = _pick(
            rng, (f"{f.cardiomegaly} cardiomegaly", "cardiomegaly", "enlarged cardiac silhouette")
        )
        add("cardiomegaly", _cardiomegaly(f, ctx, rng, terse), short)
    return out


def _impression_items(
    f: StudyFindings, rng, positives: list[_Mention], summarize_devices: bool
) -> list[str]:
    """Impression items; every positive finding appears (devices maybe as a summary)."""
    if f.is_normal:
        return [_pick(rng, NORMAL_IMPRESSIONS)]
    items = []
    for mention in positives:
        phrase = mention.short if _chance(rng, 0.65) else mention.phrase
        # Devices are often summarised in the impression; keep a keyword either way.
        if mention.group == "support_devices" and summarize_devices and _chance(rng, 0.5):
            phrase = _pick(
                rng, ("lines and tubes as described", "support devices in appropriate position")
            )
        items.append(_sentence(phrase))
    if not (f.pneumothorax_left or f.pneumothorax_right) and _chance(rng, 0.4):
        items.append("No pneumothorax.")
    return list(dict.fromkeys(items))  # several devices may share one summary line


# --- styles --------------------------------------------------------------------------------


def _exam_name(views: tuple[str, ...], rng) -> str:
    if "LAT" in views and views[0] == "PA":
        return _pick(
            rng,
            (
                "CHEST (PA AND LAT)",
                "Xray Chest PA and Lateral",
                "Chest, 2 views, frontal and lateral",
            ),
        )
    if "LAT" in views:
        return _pick(rng, ("CHEST (AP AND LAT)", "Chest 2 views"))
    if views[0] == "AP":
        return _pick(
            rng, ("CHEST (PORTABLE AP)", "Portable AP chest", "CHEST PORT. LINE PLACEMENT")
        )
    return _pick(rng, ("CHEST (PA)", "Chest 1 view", "XR CHEST PA"))


def _technique(views: tuple[str, ...], rng) -> str:
    if "LAT" in views:
        first = "PA" if views[0] == "PA" else "AP"
        return _pick(
            rng,
            (
                f"{first} and lateral views of the chest.",
                f"Chest {first} and lateral.",
                "Frontal and lateral chest radiographs.",
            ),
        )
    if views[0] == "AP":
        return _pick(
            rng,
            (
                "Single portable AP view of the chest.",
                "Portable semi-upright AP radiograph of the chest.",
            ),
        )
    return _pick(rng, ("Single PA view of the chest.", "PA chest radiograph."))


def _age_sex(ctx: ReportContext, rng) -> str:
    who = "woman" if ctx.sex == "F" else "man"
    if ctx.house.deid == "XXXX":
        return f"XXXX-year-old {'female' if ctx.sex == 'F' else 'male'}"
    return f"___ year old {who}"


def _comparison(ctx: ReportContext, rng) -> str:
    d = ctx.house.deid
    if ctx.prior is None:
        return _pick(rng, ("None.", "No prior studies available.", "None available."))
    return _pick(
        rng, (f"{d}.", f"Chest radiograph from {d}.", f"Prior study dated {d}.", f"{d} and {d}.")
    )


def _header(name: str, house: HouseStyle) -> tuple[str, str]:
    """(prefix, separator-after-prefix) for a section header in the house format."""
    if house.header == "colon_upper":
        return f"{name.upper()}:", " "
    if house.header == "colon_newline":
        return f"{name.upper()}:", "\n"
    if house.header == "dash_title":
        return f"{name.title()} -", " "
    if house.header == "bare_upper":
        return name.upper(), "\n"
    return f"{name.title()}:", " "


def _section(name: str, body: str, house: HouseStyle) -> str:
    head, sep = _header(name, house)
    return f"{head}{sep}{body}"


def _templated(f: StudyFindings, ctx: ReportContext, rng) -> str:
    house = ctx.house
    positives = _positives(f, ctx, rng, terse=False)
    sentences = [_sentence(m.phrase) for m in positives] + [
        _sentence(n) for n in _negatives(f, rng, terse=False)
    ]
    if ctx.prior is not None and _chance(rng, 0.5):
        sentences.insert(0, f"Compared to prior {house.deid} chest radiograph.")
    parts: list[str] = []
    if house.final_report_banner:
        parts.append("                                 FINAL REPORT")
    if _chance(rng, house.optional_sections):
        parts.append(_section("examination", _exam_name(ctx.views, rng), house))
    if _chance(rng, house.optional_sections):
        head = _pick(rng, ("indication", "history"))
        parts.append(_section(head, f"{_age_sex(ctx, rng)} with {ctx.indication}.", house))
    if _chance(rng, house.optional_sections * 0.7):
        parts.append(_section("technique", _technique(ctx.views, rng), house))
    if _chance(rng, house.optional_sections):
        parts.append(_section("comparison", _comparison(ctx, rng), house))
    parts.append(_section("findings", " ".join(sentences), house))
    items = _impression_items(f, rng, positives, summarize_devices=True)
    if len(items) > 1 and _chance(rng, house.numbered_impression):
        body = "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))
        head, _ = _header("impression", house)
        parts.append(f"{head}\n{body}")
    else:
        parts.append(_section("impression", " ".join(items), house))
    if (f.pneumothorax_left or f.pneumothorax_right) and _chance(rng, 0.6):
        parts.append(
            f"NOTIFICATION: Findings discussed with Dr. {house.deid} by Dr. {house.deid} "
            f"on the telephone on {house.deid} at {house.deid}."
        )
    if _chance(rng, house.signature):
        parts.append("I have personally reviewed the images and agree with the findings above.")
    return "\n\n".join(parts) + "\n"


def _impression_only(f: StudyFindings, ctx: ReportContext, rng) -> str:
    positives = _positives(f, ctx, rng, terse=False)
    items = _impression_items(f, rng, positives, summarize_devices=False)
    if f.is_normal and _chance(rng, 0.4):
        return _pick(rng, NORMAL_IMPRESSIONS) + "\n"
    body = " ".join(items)
    if _chance(rng, 0.35):
        return body + "\n"  # bare one-liner
    parts = []
    if _chance(rng, 0.4):
        parts.append(_section("indication", f"{ctx.indication}.", ctx.house))
    if len(items) > 1 and _chance(rng, ctx.house.numbered_impression):
        head, _ = _header("impression", ctx.house)
        parts.append(head + "\n" + "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1)))
    else:
        parts.append(_section("impression", body, ctx.house))
    return "\n".join(parts) + "\n"


_NARRATIVE_JOINERS = ("Additionally, ", "There is also ", "Also noted is ", "In addition, ")


def _narrative(f: StudyFindings, ctx: ReportContext, rng) -> str:
    d = ctx.house.deid
    views = ctx.views
    if "LAT" in views:
        first = "PA" if views[0] == "PA" else "AP"
        opening = _pick(
            rng,
            (
                f"{first} and lateral views of the chest were obtained.",
                "Frontal and lateral views of the chest are provided.",
                "Two views of the chest.",
            ),
        )
    elif views[0] == "AP":
        opening = _pick(
            rng,
            (
                "A single portable AP view of the chest was obtained.",
                "Portable upright AP view of the chest.",
            ),
        )
    else:
        opening = _pick(
            rng, ("A single PA view of the chest was obtained.", "PA view of the chest.")
        )
    sentences = [opening]
    if ctx.prior is not None:
        sentences.append(
            _pick(
                rng,
                (
                    f"Comparison is made to the prior study from {d}.",
                    f"Compared to the prior radiograph of {d}, there has been interval change as follows.",
                    f"As compared to {d}, the study is re-evaluated.",
                ),
            )
        )
    positives = _positives(f, ctx, rng, terse=False)
    for i, (_, phrase, _short) in enumerate(positives):
        if i > 0 and _chance(rng, 0.4):
            joiner = _pick(rng, _NARRATIVE_JOINERS)
            sentences.append(_sentence(joiner + phrase.removeprefix("there is ")))
        else:
            sentences.append(_sentence(phrase))
    negatives = _negatives(f, rng, terse=False)
    if negatives:
        lead = "Otherwise, " if positives and _chance(rng, 0.5) else ""
        sentences.append(_sentence(lead + negatives[0]))
        sentences.extend(_sentence(n) for n in negatives[1:])
    if f.is_normal:
        sentences.append(
            _pick(
                rng, ("Overall, there is no acute cardiopulmonary process.", "No acute findings.")
            )
        )
    elif _chance(rng, 0.5):
        sentences.append(
            _pick(
                rng,
                (
                    "Clinical correlation is recommended.",
                    "Follow-up radiographs may be helpful to document resolution.",
                    f"These findings were communicated to the referring clinician on {d}.",
                ),
            )
        )
    # Narrative notes come as one or two paragraphs.
    cut = (
        int(rng.integers(1, len(sentences)))
        if len(sentences) > 3 and _chance(rng, 0.5)
        else len(sentences)
    )
    text = " ".join(sentences[:cut])
    if cut < len(sentences):
        text += "\n\n" + " ".join(sentences[cut:])
    return text + "\n"


def _terse(f: StudyFindings, ctx: ReportContext, rng) -> str:
    views = "PA/lat" if "LAT" in ctx.views else ("port AP" if ctx.views[0] == "AP" else "PA")
    lead = _pick(rng, (f"CXR {views}:", f"{views} CXR.", f"CXR ({views})", f"{views}:"))
    prior = ""
    if ctx.prior is not None and _chance(rng, 0.6):
        prior = _pick(rng, (f"c/w prior {ctx.house.deid}.", f"vs {ctx.house.deid}:", "cf prior -"))
    positives = _positives(f, ctx, rng, terse=True)
    negatives = _negatives(f, rng, terse=True)
    bits = [b.rstrip(".") for b in [m.phrase for m in positives] + negatives]
    body = ". ".join(bits) + "." if bits else ""
    lines = [" ".join(x for x in (lead, prior, body) if x)]
    if f.is_normal:
        lines.append(_pick(rng, ("Imp: " + _pick(rng, TERSE_NORMAL), _pick(rng, TERSE_NORMAL))))
    elif _chance(rng, 0.6):
        summary = ", ".join(m.short.rstrip(".") for m in positives[:3])
        lines.append(f"{_pick(rng, ('Imp:', 'IMP:', 'Impression:'))} {summary}.")
    return "\n".join(lines) + "\n"


_WRITERS = {
    "templated": _templated,
    "impression_only": _impression_only,
    "narrative": _narrative,
    "terse": _terse,
}


def write_report(findings: StudyFindings, ctx: ReportContext, rng: np.random.Generator) -> str:
    """Render a report for `findings` in `ctx.style`; deterministic given the generator state."""
    if ctx.style not in _WRITERS:
        raise ValueError(f"report style {ctx.style!r} is unknown; expected one of {STYLES}")
    if not ctx.views:
        raise ValueError("report context has no views; a study needs at least one image")
    return _WRITERS[ctx.style](findings, ctx, rng)
