"""Generate the synthetic demo dataset: MIMIC-CXR-like folders of DICOM studies and reports.

Layout (like MIMIC-CXR-JPG/DICOM):

    out_dir/files/p10/p10000032/s50414267/<SOPInstanceUID>.dcm
    out_dir/files/p10/p10000032/s50414267.txt          (the study's report)
    out_dir/demo_labels.csv                            (ground truth, for tests only)

Everything is derived from `seed` through seeded numpy Generators and hashes, never from the
clock, so the same arguments give byte-identical output. Each institution has a house style
(report wording and DICOM habits), which is where the heterogeneity the method targets comes
from.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cxr_assets.demo.dicom_writer import ImageHeader, deterministic_uid, encode_pixels, write_dicom
from cxr_assets.demo.phantom import render_view
from cxr_assets.demo.reports import (
    DEVICE_INDICATIONS,
    DEVICES,
    GRADES,
    INDICATIONS,
    LOBES,
    SEVERITIES,
    STYLES,
    HouseStyle,
    ReportContext,
    StudyFindings,
    write_report,
)

LABELS_FILE = "demo_labels.csv"
# Below this many studies per worker process, starting the processes costs more than they save.
MIN_STUDIES_PER_WORKER = 100
LABEL_COLUMNS = ("study_id", "patient_id", "institution", "style", "findings")

# Marginal rates among abnormal studies, tuned so each finding lands at 5-25% overall.
PREVALENCE: dict[str, float] = {
    "cardiomegaly": 0.16,
    "effusion_left": 0.12,
    "effusion_right": 0.14,
    "pneumothorax_left": 0.075,
    "pneumothorax_right": 0.075,
    "consolidation": 0.17,
    "edema": 0.12,
    "nodule": 0.08,
    "support_devices": 0.18,
}
NO_FINDING_RATE = 0.25
FIELD_OF_VIEW_MM = 380.0
BASE_DATE = dt.date(2150, 1, 1)  # shifted into the future, as MIMIC does


@dataclass(frozen=True)
class DemoSummary:
    out_dir: Path
    n_studies: int
    n_images: int
    n_patients: int
    labels_csv: Path  # out_dir / "demo_labels.csv"


@dataclass(frozen=True)
class Institution:
    """One site's habits: report styles it produces and how its scanners write DICOM."""

    name: str
    style_weights: tuple[float, float, float, float]  # in STYLES order
    house: HouseStyle
    dx_rate: float  # P(Modality DX) else CR
    mono1_rate: float  # P(MONOCHROME1)
    bits: tuple[int, ...]
    rescale_rate: float
    window_rate: float
    lateral_name: str  # "LL" or "LATERAL"
    aspect: float  # columns / rows
    description_prefix: str


# Columns: style weights (templated, impression_only, narrative, terse), house style
# (deid, header, numbered, banner, optional sections, signature), P(DX), P(MONOCHROME1),
# BitsStored choices, P(rescale), P(window), lateral ViewPosition, aspect, description prefix.
# fmt: off
_PROFILES: tuple[Institution, ...] = (
    # MIMIC-like academic centre: templated, "___" de-identification, FINAL REPORT banner.
    Institution("A", (0.68, 0.17, 0.05, 0.10), HouseStyle("___", "colon_newline", 0.3, True, 0.85, 0.1),
                0.3, 0.25, (12, 16, 8), 0.3, 0.7, "LL", 1.0, "CHEST"),
    # IU/OpenI-like: "XXXX" tokens, title-case headers, many impression-only notes.
    Institution("B", (0.55, 0.30, 0.15, 0.0), HouseStyle("XXXX", "colon_title", 0.1, False, 0.8, 0.0),
                0.7, 0.5, (12, 10, 16), 0.5, 0.5, "LATERAL", 0.84, "Xray Chest"),
    # Community hospital: narrative dictation and terse notes.
    Institution("C", (0.0, 0.20, 0.45, 0.35), HouseStyle("___", "dash_title", 0.6, False, 0.5, 0.3),
                0.4, 0.6, (8, 10, 12), 0.2, 0.3, "LL", 1.0, "XR CHEST"),
    # Urgent care / ICU group: abbreviation-heavy.
    Institution("D", (0.15, 0.25, 0.0, 0.60), HouseStyle("XXXX", "bare_upper", 0.5, False, 0.6, 0.0),
                0.5, 0.3, (16, 12), 0.6, 0.8, "LATERAL", 0.9, "CXR"),
    # Mixed teaching hospital.
    Institution("E", (0.40, 0.20, 0.30, 0.10), HouseStyle("___", "colon_upper", 0.4, True, 0.7, 0.2),
                0.5, 0.4, (10, 12, 16), 0.4, 0.6, "LL", 1.17, "CHEST"),
)
# fmt: on


def institutions(n: int) -> list[Institution]:
    """`n` institutions cycling through the base profiles, named INST_A, INST_B, ..."""
    return [
        replace(_PROFILES[i % len(_PROFILES)], name=f"INST_{chr(ord('A') + i)}") for i in range(n)
    ]


# --- planning ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Study:
    patient_id: int
    study_id: int
    index_in_patient: int
    institution: Institution
    style: str
    findings: StudyFindings
    prior: StudyFindings | None
    views: tuple[str, ...]  # PA / AP / LAT
    date: dt.date
    time: str
    sex: str
    age: int
    indication: str


def _sample_findings(rng: np.random.Generator, prior: StudyFindings | None) -> StudyFindings:
    """Ground truth for one study; chronic findings (heart size, devices) tend to persist."""
    keep_heart = prior is not None and prior.cardiomegaly is not None and rng.random() < 0.7
    keep_devices = prior is not None and bool(prior.devices) and rng.random() < 0.5
    if not (keep_heart or keep_devices) and rng.random() < NO_FINDING_RATE:
        return StudyFindings()
    names = list(PREVALENCE)
    probs = np.array([PREVALENCE[k] for k in names])
    while True:
        flags = dict(zip(names, rng.random(len(names)) < probs))
        if keep_heart:
            flags["cardiomegaly"] = True
        if keep_devices:
            flags["support_devices"] = True
        if any(flags.values()):
            break

    def sev(options) -> str:
        return str(options[int(rng.choice(len(options), p=[0.5, 0.35, 0.15]))])

    devices: tuple[str, ...] = ()
    if flags["support_devices"]:
        if keep_devices:
            devices = prior.devices
        else:
            chosen = rng.random(len(DEVICES)) < (0.45, 0.35, 0.45, 0.3)
            if not chosen.any():
                chosen[int(rng.integers(len(DEVICES)))] = True
            devices = tuple(d for d, c in zip(DEVICES, chosen) if c)
    heart = prior.cardiomegaly if keep_heart else (sev(GRADES) if flags["cardiomegaly"] else None)
    return StudyFindings(
        cardiomegaly=heart,
        effusion_left=sev(SEVERITIES) if flags["effusion_left"] else None,
        effusion_right=sev(SEVERITIES) if flags["effusion_right"] else None,
        pneumothorax_left=sev(SEVERITIES) if flags["pneumothorax_left"] else None,
        pneumothorax_right=sev(SEVERITIES) if flags["pneumothorax_right"] else None,
        consolidation_lobe=str(rng.choice(LOBES)) if flags["consolidation"] else None,
        edema=sev(GRADES) if flags["edema"] else None,
        nodule_lobe=str(rng.choice(LOBES)) if flags["nodule"] else None,
        nodule_mm=int(rng.integers(6, 26)) if flags["nodule"] else 0,
        devices=devices,
    )


def _sample_views(
    rng: np.random.Generator, findings: StudyFindings, max_views: int
) -> tuple[str, ...]:
    """Frontal first (AP more likely with devices: portable ICU films); the second is usually lateral."""
    portable = bool(findings.devices) and rng.random() < 0.8
    first = "AP" if portable or rng.random() < 0.25 else "PA"
    n = int(rng.choice(3, p=[0.7, 0.25, 0.05] if portable else [0.35, 0.55, 0.10])) + 1
    views = [first]
    for _ in range(min(n, max_views) - 1):
        views.append("LAT" if "LAT" not in views and rng.random() < 0.85 else first)
    return tuple(views)


def _plan(n_studies: int, seed: int, n_institutions: int, views_per_study_max: int) -> list[_Study]:
    rng = np.random.default_rng([seed, 0])
    sites = institutions(n_institutions)
    site_weights = np.linspace(1.2, 0.8, n_institutions)  # uneven site volumes, like real data
    site_weights /= site_weights.sum()
    # Patients 1-3 studies; ids are unique, increasing, 8 digits starting 10..19 like MIMIC.
    counts: list[int] = []
    while sum(counts) < n_studies:
        counts.append(min(int(rng.choice(3, p=[0.55, 0.3, 0.15])) + 1, n_studies - sum(counts)))
    step = max(1, 8_000_000 // len(counts))
    patient_ids = 10_000_000 + np.cumsum(rng.integers(1, step + 1, size=len(counts)))
    study_step = max(1, 40_000_000 // n_studies)
    study_ids = 50_000_000 + np.cumsum(rng.integers(1, study_step + 1, size=n_studies))
    study_ids = study_ids[rng.permutation(n_studies)]  # study numbers are not in patient order

    studies: list[_Study] = []
    k = 0
    for pid, count in zip(patient_ids, counts):
        site = sites[int(rng.choice(n_institutions, p=site_weights))]
        sex = "F" if rng.random() < 0.5 else "M"
        age = int(rng.integers(20, 91))
        first = date = BASE_DATE + dt.timedelta(days=int(rng.integers(0, 3650)))
        prior: StudyFindings | None = None
        for i in range(count):
            findings = _sample_findings(rng, prior)
            style = STYLES[
                int(
                    rng.choice(
                        len(STYLES), p=np.array(site.style_weights) / sum(site.style_weights)
                    )
                )
            ]
            views = _sample_views(rng, findings, views_per_study_max)
            pool = DEVICE_INDICATIONS if findings.devices and rng.random() < 0.6 else INDICATIONS
            indication = str(pool[int(rng.integers(len(pool)))])
            seconds = int(rng.integers(0, 86400))
            time = f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"
            studies.append(
                _Study(
                    int(pid),
                    int(study_ids[k]),
                    i,
                    site,
                    style,
                    findings,
                    prior,
                    views,
                    date,
                    time,
                    sex,
                    age + (date - first).days // 365,
                    indication,
                )
            )
            prior = findings
            date = date + dt.timedelta(days=int(rng.integers(1, 400)))
            k += 1
    return studies


# --- writing -------------------------------------------------------------------------------


def _study_description(study: _Study) -> str:
    prefix = study.institution.description_prefix
    views = study.views
    if "LAT" in views:
        return (
            f"{prefix} ({views[0]} AND LAT)"
            if prefix.isupper()
            else f"{prefix} {views[0]} and Lateral"
        )
    if views[0] == "AP":
        return f"{prefix} (PORTABLE AP)" if prefix.isupper() else f"{prefix} Portable AP"
    return f"{prefix} ({views[0]})" if prefix.isupper() else f"{prefix} {views[0]}"


def _image_shape(image_size: int, aspect: float) -> tuple[int, int]:
    """(rows, cols) with the longer side = image_size and an even column count."""
    if aspect <= 1.0:
        return image_size, max(16, round(image_size * aspect / 2) * 2)
    return max(16, round(image_size / aspect)), image_size


def _write_study(study: _Study, seed: int, image_size: int, study_dir: Path) -> int:
    site = study.institution
    rows, cols = _image_shape(image_size, site.aspect)
    study_uid = deterministic_uid(seed, "study", study.study_id)
    for v, view in enumerate(study.views):
        rng = np.random.default_rng([seed, study.study_id, 10 + v])
        image = render_view(study.findings, view, rows, cols, rng)
        bits = int(rng.choice(site.bits))
        rescale = None
        if bits > 8 and rng.random() < site.rescale_rate:
            options = ((1.0, 0.0), (1.0, -1024.0), (0.5, 0.0), (2.0, -100.0))
            rescale = options[int(rng.integers(len(options)))]
        sop_uid = deterministic_uid(seed, "sop", study.study_id, v)
        header = ImageHeader(
            patient_id=str(study.patient_id),
            patient_name=f"DEMO^{study.patient_id}",
            patient_sex=study.sex,
            patient_age=f"{study.age:03d}Y",
            study_uid=study_uid,
            series_uid=deterministic_uid(seed, "series", study.study_id, v),
            sop_uid=sop_uid,
            study_id=str(study.study_id),
            study_date=study.date.strftime("%Y%m%d"),
            study_time=study.time,
            study_description=_study_description(study),
            institution=site.name,
            modality="DX" if rng.random() < site.dx_rate else "CR",
            view_position=site.lateral_name if view == "LAT" else view,
            photometric="MONOCHROME1" if rng.random() < site.mono1_rate else "MONOCHROME2",
            bits_stored=bits,
            pixel_spacing_mm=round(FIELD_OF_VIEW_MM / image_size * rng.uniform(0.95, 1.05), 4),
            series_number=v + 1,
            instance_number=1,
            rescale=rescale,
            window=bool(rng.random() < site.window_rate),
        )
        stored = encode_pixels(
            image, header, lo=rng.uniform(0.02, 0.15), hi=rng.uniform(0.75, 0.98)
        )
        write_dicom(study_dir / f"{sop_uid}.dcm", stored, header)
    return len(study.views)


def _write_study_files(job: tuple[_Study, int, int, Path]) -> int:
    """One study's DICOM files and report (a worker process's unit); returns its image count."""
    study, seed, image_size, out_dir = job
    patient_dir = out_dir / "files" / f"p{str(study.patient_id)[:2]}" / f"p{study.patient_id}"
    n_images = _write_study(study, seed, image_size, patient_dir / f"s{study.study_id}")
    text = _study_report(study, seed)
    (patient_dir / f"s{study.study_id}.txt").write_text(text, encoding="utf-8")
    return n_images


def _study_report(study: _Study, seed: int) -> str:
    ctx = ReportContext(style=study.style, house=study.institution.house, views=study.views,
                        sex=study.sex, prior=study.prior, indication=study.indication)
    return write_report(study.findings, ctx, np.random.default_rng([seed, study.study_id, 1]))


def sample_reports(n: int, seed: int, n_institutions: int = 3, views_per_study_max: int = 2
                   ) -> list[str]:
    """The reports `generate_demo_dataset` would write for these settings, without images: a
    deterministic set of reports in every demo style (calibration, ablation proxies)."""
    return [_study_report(study, seed)
            for study in _plan(n, seed, n_institutions, views_per_study_max)]


def _prepare_out_dir(out_dir: Path) -> None:
    """Refuse to write into a folder holding foreign files; clear a previous demo run."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} exists and is not a directory")
    if not out_dir.exists():
        out_dir.mkdir(parents=True)
        return
    ours = {"files", LABELS_FILE}
    foreign = sorted(
        p.name for p in out_dir.iterdir() if p.name not in ours and not p.name.startswith(".")
    )
    if foreign:
        raise ValueError(
            f"out_dir {out_dir} already holds files that are not demo data ({', '.join(foreign[:5])}); "
            "choose an empty or previous demo folder"
        )
    if (out_dir / "files").exists():
        shutil.rmtree(out_dir / "files")
    (out_dir / LABELS_FILE).unlink(missing_ok=True)


def generate_demo_dataset(
    out_dir: Path,
    n_studies: int = 300,
    seed: int = 7,
    image_size: int = 256,
    n_institutions: int = 3,
    views_per_study_max: int = 2,
    progress: bool = True,
    workers: int = 1,
) -> DemoSummary:
    """Write `n_studies` synthetic studies (DICOM + report) under `out_dir`; deterministic by seed,
    whatever the number of `workers` (processes; used from MIN_STUDIES_PER_WORKER studies each)."""
    if not isinstance(n_studies, int) or n_studies < 1:
        raise ValueError(f"n_studies must be a positive integer, got {n_studies!r}")
    if not isinstance(image_size, int) or not 32 <= image_size <= 4096:
        raise ValueError(f"image_size must be an integer in [32, 4096], got {image_size!r}")
    if not isinstance(n_institutions, int) or not 1 <= n_institutions <= 26:
        raise ValueError(f"n_institutions must be an integer in [1, 26], got {n_institutions!r}")
    if not isinstance(views_per_study_max, int) or not 1 <= views_per_study_max <= 3:
        raise ValueError(f"views_per_study_max must be 1, 2 or 3, got {views_per_study_max!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir)

    from tqdm.auto import tqdm

    studies = _plan(n_studies, seed, n_institutions, views_per_study_max)
    jobs = [(study, seed, image_size, out_dir) for study in studies]
    # Every study draws from its own seeded generator: worker processes give the same files.
    workers = max(1, min(int(workers), len(studies) // MIN_STUDIES_PER_WORKER))
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn")))
            written = pool.map(_write_study_files, jobs, chunksize=16)
        else:
            written = map(_write_study_files, jobs)
        n_images = sum(tqdm(written, total=len(jobs), desc="demo studies", disable=not progress))
    rows = [(study.study_id, study.patient_id, study.institution.name, study.style,
             ";".join(study.findings.codes)) for study in studies]

    labels = out_dir / LABELS_FILE
    with labels.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(LABEL_COLUMNS)
        writer.writerows(rows)
    return DemoSummary(
        out_dir=out_dir,
        n_studies=len(studies),
        n_images=n_images,
        n_patients=len({s.patient_id for s in studies}),
        labels_csv=labels,
    )
