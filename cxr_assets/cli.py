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


# The stages that run in shards (`cxr stage NAME --shard I/N`), and the setting that holds N.
SHARD_SETTINGS = {"report_embeddings": "text_encoder.embed_shards",
                  "study_images": "ingest.decode_shards"}


def cmd_stage(args) -> int:
    from cxr_assets.stages import stage_module

    params, paths = _load(args)
    if args.shard is None:
        result = stage_module(args.name).run(params, paths, progress=not args.no_progress)
        return _print_result(result)
    from cxr_assets.sharding import parse_shard

    if args.name not in SHARD_SETTINGS:
        print(f"error: --shard is for {' and '.join(SHARD_SETTINGS)} only, not {args.name}",
              file=sys.stderr)
        return 2
    setting = SHARD_SETTINGS[args.name]
    section, name = setting.split(".")
    try:
        shard = parse_shard(args.shard, getattr(getattr(params, section), name), setting)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return _print_result(stage_module(args.name).run(params, paths, progress=not args.no_progress,
                                                     shard=shard))


def cmd_reevaluate(args) -> int:
    from cxr_assets.stages import reevaluation

    params, paths = _load(args)
    return _print_result(reevaluation.run(params, paths, progress=not args.no_progress, today=args.date))


def cmd_search(args) -> int:
    from cxr_assets.embed.search import StudySearch, open_encoder, reports_for_text, vector_db_path

    params, paths = _load(args)
    modes = sum(x is not None for x in (args.query, args.image, args.similar_to))
    if modes != 1:
        print("error: give exactly one of QUERY, --image PATH or --similar-to STUDY_ID", file=sys.stderr)
        return 2
    with StudySearch(vector_db_path(paths)) as search:
        if args.similar_to is not None:
            hits, what = search.similar_reports(study_id=args.similar_to, k=args.k), "reports similar to"
        elif args.in_reports:
            if args.query is None:
                print("error: --in-reports needs a QUERY", file=sys.stderr)
                return 2
            hits, what = reports_for_text(paths, args.query, k=args.k), "reports (report encoder) for"
        else:
            encoder = open_encoder(params, paths, args.model, search.info)
            if args.image is not None:
                hits, what = search.image_to_reports(encoder, args.image, k=args.k), "reports for image"
            else:
                hits, what = search.text_to_studies(encoder, args.query, k=args.k), "studies for"
        subject = args.query or args.image or args.similar_to
        if args.in_reports:
            print(f"{what} {subject!r} ({paths.text_encoder_dir}, exact search)")
        else:
            print(f"{what} {subject!r} ({search.info.model_name} v{search.info.model_version}, "
                  f"{search.info.n_rows} studies, {'HNSW' if search.info.hnsw_columns else 'exact'} search)")
        columns = [c for c in ("study_id", "split", "view_position", "similarity", "report_text") if c in hits.columns]
        if args.json:
            print(json.dumps(hits.select(columns).to_dicts(), indent=2, default=str))
        else:
            for rank, row in enumerate(hits.select(columns).iter_rows(named=True), start=1):
                text = " ".join(str(row.get("report_text", "")).split())[:110]
                print(f"{rank:>3}  {row['study_id']}  {row['similarity']:.3f}  [{row.get('split', '')}]  {text}")
    return 0


def cmd_rollback(args) -> int:
    from cxr_assets.registry.promotion import append_history
    from cxr_assets.registry.tracking import configure_mlflow, rollback_champion

    params, paths = _load(args)
    client = configure_mlflow(params, paths)
    name = params.registry.model_name
    try:
        demoted, champion = rollback_champion(client, name, args.to, args.reason)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    append_history(paths, {"event": "rollback", "model_name": name, "demoted_version": demoted,
                           "champion_after": champion, "reason": args.reason})
    print(f"{name}@champion: v{demoted} -> v{champion} (v{demoted} tagged 'demoted'; "
          "champion_model will not re-promote it)")
    return 0


def cmd_demo_data(args) -> int:
    from cxr_assets.demo import generate_demo_dataset

    summary = generate_demo_dataset(Path(args.out), n_studies=args.n, seed=args.seed,
                                    image_size=args.image_size, progress=not args.no_progress)
    print(f"wrote {summary.n_studies} studies / {summary.n_images} images of "
          f"{summary.n_patients} patients to {summary.out_dir}")
    return 0


def cmd_catalog(args) -> int:
    from cxr_assets.ingest.catalog_views import connect_catalog

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
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="report_embeddings: encode shard I of N into the embedding cache (N "
                   "defaults to text_encoder.embed_shards); study_images: decode shard I of N "
                   "into the image cache (N defaults to ingest.decode_shards); run the stage "
                   "without --shard afterwards to write the table")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("reevaluate", help="re-evaluate models:/<name>@champion on the current test split")
    p.add_argument("--date", default=None, help="report date (YYYY-MM-DD), default today")
    p.set_defaults(func=cmd_reevaluate)

    p = sub.add_parser("search", help="search studies: text -> studies, image -> reports, similar reports")
    p.add_argument("query", nargs="?", default=None, help="free text, e.g. 'large right pleural effusion'")
    p.add_argument("--image", default=None, help="image file (DICOM/PNG/JPG): find matching reports")
    p.add_argument("--similar-to", default=None, help="study id: find reports similar to its report")
    p.add_argument("--k", type=int, default=10, help="how many results")
    p.add_argument("--model", default="auto",
                   help="query encoder: auto (champion if it built the table, else local), local, or a registry alias")
    p.add_argument("--in-reports", action="store_true",
                   help="QUERY -> reports in the report encoder's own space (its query adapter), "
                        "not through CLIP")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("rollback", help="move the champion alias back to the previous (or a given) version")
    p.add_argument("--to", default=None, help="version to make champion (default: the one it replaced)")
    p.add_argument("--reason", default="manual rollback", help="recorded on the demoted version")
    p.set_defaults(func=cmd_rollback)

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
