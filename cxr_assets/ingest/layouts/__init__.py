"""Dataset-layout adapters, one module per layout, chosen by `ingest.layout` (or detected).

Each module exposes `detect(raw_dir) -> str | None` (why the layout matches, or None) and
`list_studies(raw_dir, options: IngestParams) -> LayoutListing`. Detection tries the layouts in
the order below: the most specific signatures first, a bare DICOM tree last.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from cxr_assets.ingest.listing import Layout

# name -> (module, description, public de-identified dataset?)
_LAYOUTS: dict[str, tuple[str, str, bool]] = {
    "mimic_cxr": ("mimic", "MIMIC-CXR / MIMIC-CXR-JPG: files/pXX/pNNNNNNNN/sNNNNNNNN/* + sNNNNNNNN.txt", True),
    "iu_xray": ("iu_xray", "IU X-ray (Kaggle): indiana_reports.csv + indiana_projections.csv + images_normalized/", True),
    "openi_xml": ("openi_xml", "OpenI: ecgen-radiology/*.xml reports + their parentImage files", True),
    "chexpert": ("chexpert", "CheXpert train/valid CSVs (+ CheXpert Plus report CSV)", True),
    "padchest": ("padchest", "PadChest: PADCHEST_*.csv(.gz) with a Spanish report column", True),
    "csv_manifest": ("csv_manifest", "generic CSV manifest: image path column + report text column", False),
    "dicom_tree": ("dicom_tree", "DICOM folder tree of any nesting (PACS export) + sidecar/SR reports", False),
}
LAYOUT_NAMES = tuple(_LAYOUTS)


def get_layout(name: str) -> Layout:
    if name not in _LAYOUTS:
        raise ValueError(f"unknown dataset layout {name!r} (known: {', '.join(LAYOUT_NAMES)}, or auto)")
    module_name, description, public = _LAYOUTS[name]
    module = importlib.import_module(f"cxr_assets.ingest.layouts.{module_name}")
    return Layout(name, description, module.list_studies, module.detect, public)


def detect_layout(raw_dir: Path) -> tuple[str, str]:
    """(layout name, why) for the first layout whose signature `raw_dir` shows."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"{raw_dir}: raw data folder not found")
    for name in LAYOUT_NAMES:
        why = get_layout(name).detect(raw_dir)
        if why:
            return name, why
    raise ValueError(
        f"{raw_dir}: cannot detect the dataset layout (none of {', '.join(LAYOUT_NAMES)} matches); "
        "set ingest.layout explicitly"
    )
