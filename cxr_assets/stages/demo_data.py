"""demo_data: synthetic chest X-ray studies (real DICOM files + heterogeneous free-text reports).

The embedded default data set, so the whole chain runs on a fresh machine with no external data.
Deterministic by `demo_data.seed`; written to `demo_data.out_dir`, which `out_dir` points at
by default (point out_dir at your own studies to train on them instead).
"""

from __future__ import annotations

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import StageResult


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.demo import generate_demo_dataset
    from cxr_assets.stages.base import atomic_dir

    d = params.demo_data
    out_dir = paths.at(d.out_dir)
    with atomic_dir(out_dir) as tmp:
        summary = generate_demo_dataset(
            tmp, n_studies=d.n_studies, seed=d.seed, image_size=d.image_size,
            n_institutions=d.n_institutions, views_per_study_max=d.views_per_study_max,
            progress=progress, workers=d.workers,
        )
    return StageResult(
        "demo_data",
        {"raw_dir": out_dir},
        {
            "n_studies": summary.n_studies,
            "n_images": summary.n_images,
            "n_patients": summary.n_patients,
            "raw_dir": out_dir,
            "seed": d.seed,
        },
    )
