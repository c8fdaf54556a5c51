"""Command line: `cxr <command>` (also `python -m cxr_assets`).

`cxr stage NAME` runs one pipeline stage; dvc.yaml calls it, so DVC and Dagster share one
implementation. The other commands are for users: demo data, catalog SQL, re-evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _load(args):
    from cxr_assets.config import load_params
    from cxr_assets.paths import ProjectPaths

    params = load_params(args.params)
    return params, ProjectPaths.from_params(params)


def _print_result(result) -> int:
    summary = result.summary()
    # Inline images are for the Dagster UI; keep terminal output readable.
    summary["metadata"] = {k: v for k, v in summary["metadata"].items()
                           if not (isinstance(v, str) and "base64," in v)}
    print(json.dumps(summary, indent=2, default=str))
    failures = result.blocking_failures
    for check in failures:
        print(f"BLOCKING CHECK FAILED: {result.stage}.{check.name}: {check.description} "
              f"{json.dumps(check.metadata, default=str)}", file=sys.stderr)
    for check in result.checks:
        if not check.passed and not check.blocking:
            print(f"warning: check {result.stage}.{check.name} failed: {check.description}", file=sys.stderr)
    return 1 if failures else 0


def cmd_stage(args) -> int:
    from cxr_assets.stages import stage_module

    params, paths = _load(args)
    result = stage_module(args.name).run(params, paths, progress=not args.no_progress)
    return _print_result(result)


def cmd_reevaluate(args) -> int:
    from cxr_assets.stages import reevaluation

    params, paths = _load(args)
    return _print_result(reevaluation.run(params, paths, progress=not args.no_progress, today=args.date))


def cmd_demo_data(args) -> int:
    from cxr_assets.demo import generate_demo_dataset

    summary = generate_demo_dataset(Path(args.out), n_studies=args.n, seed=args.seed,
                                    image_size=args.image_size, progress=not args.no_progress)
    print(f"wrote {summary.n_studies} studies / {summary.n_images} images of "
          f"{summary.n_patients} patients to {summary.out_dir}")
    return 0


def cmd_catalog(args) -> int:
    from cxr_assets.stages.catalog_views import connect_catalog

    _, paths = _load(args)
    con = connect_catalog(paths)
    try:
        print(con.sql(args.sql))
    finally:
        con.close()
    return 0


def cmd_params(args) -> int:
    params, _ = _load(args)
    print(json.dumps(params.model_dump(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from cxr_assets.stages import STAGE_NAMES

    parser = argparse.ArgumentParser(prog="cxr", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=None, help="params file (default: $CXR_PARAMS or ./params.yaml)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stage", help="run one pipeline stage (what dvc.yaml calls)")
    p.add_argument("name", choices=STAGE_NAMES)
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("reevaluate", help="re-evaluate models:/<name>@champion on the current test split")
    p.add_argument("--date", default=None, help="report date (YYYY-MM-DD), default today")
    p.set_defaults(func=cmd_reevaluate)

    p = sub.add_parser("demo-data", help="generate synthetic DICOM studies with reports")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--image-size", type=int, default=256)
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("catalog", help="run SQL on the study catalog (tables and stage views)")
    p.add_argument("sql")
    p.set_defaults(func=cmd_catalog)

    p = sub.add_parser("params", help="print the validated parameters")
    p.set_defaults(func=cmd_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    from cxr_assets.config import ParamsError
    from cxr_assets.stages.base import MissingUpstreamError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ParamsError, MissingUpstreamError, FileNotFoundError, LookupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
