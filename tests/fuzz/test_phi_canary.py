"""PHI canary: identifiers planted in demo DICOM tags and report texts never leave ingestion.

The tiny chain (tests/pipeline/test_dagster_chain.py) runs in-process through Dagster with
`ingest.phi_policy: strip`. Between demo_data and the rest of the chain, a few demo DICOMs get
unique canary values in identifying tags (tag values are never copied, so they must reach
nothing) and a few reports get a dictation line with a name, a date, an MRN and a phone number
(masked as [PHI] at ingestion, so they must reach nothing either). Then every place the chain
writes or says something is searched: captured stdout/stderr, log records and warnings, the
Dagster event log of both runs (materialization metadata included), MLflow params, tags,
registered models and artifacts, and every file under the project root except the raw inputs
(Parquet and DuckDB tables decoded, zip archives opened).
"""

from __future__ import annotations

import gzip
import logging
import zipfile
from pathlib import Path

import polars as pl
import pytest
from dagster import DagsterInstance, materialize

from cxr_assets.stages import STAGE_NAMES
from tests.helpers import tiny_params, write_params

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Long, unique tokens: random bytes of model weights never spell them by chance.
DICOM_CANARIES = {
    "PatientName": "Zyxwvut^Qqqpatient",
    "OtherPatientIDs": "QQZOTHERID7731",
    "InstitutionName": "Qqqzyx Canaryhospital",
    "ReferringPhysicianName": "Qqqreferrer^Zyxwvutdoc",
    "AccessionNumber": "ACCQQZ99887766",
    # Not DICOM's YYYYMMDD, as some exports write it (pydicom quotes bad values it checks).
    "PatientBirthDate": "1961-03-14",
}
REPORT_CANARY = "Dictated by Dr. Zyxwvut Canary on 03/14/2021, MRN 98765432, call 555-867-5309."
NEEDLES = ("zyxwvut", "qqqpatient", "qqzotherid7731", "canaryhospital", "qqqreferrer",
           "accqqz99887766", "1961-03-14", "03/14/2021", "98765432", "555-867-5309")


def leaks(text: str | bytes) -> list[str]:
    """The canary needles found in `text` (case-insensitive)."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    low = text.lower()
    return [needle for needle in NEEDLES if needle in low]


# --- searching what the chain wrote ----------------------------------------------------------------

def _parquet_text(path: Path) -> str:
    frame = pl.read_parquet(path)
    texts = [str(frame.columns)]
    for name, dtype in frame.schema.items():
        if not (dtype.is_numeric() or dtype == pl.Boolean or dtype.is_temporal()
                or (isinstance(dtype, pl.Array | pl.List) and dtype.inner.is_numeric())):
            texts.append(str(frame[name].to_list()))
    return "\n".join(texts)


def _duckdb_text(path: Path) -> str:
    import duckdb

    from cxr_assets.embed.search import load_vss

    con = duckdb.connect(str(path), read_only=True)
    try:
        load_vss(con)  # a file with an HNSW index opens only with vss loaded
        texts = []
        tables = con.execute("SELECT table_schema, table_name FROM information_schema.tables").fetchall()
        for schema, table in tables:
            columns = [name for name, kind in con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = ? AND table_name = ?", [schema, table]).fetchall()
                if "CHAR" in kind or "TEXT" in kind or "JSON" in kind or "STRUCT" in kind
                or "MAP" in kind or kind.endswith("[]") and "FLOAT" not in kind]
            texts.append(f"{table}: {columns}")
            if columns:
                select = ", ".join(f'"{c}"' for c in columns)
                texts.append(str(con.execute(f'SELECT {select} FROM "{schema}"."{table}"').fetchall()))
        return "\n".join(texts)
    finally:
        con.close()


def _file_text(path: Path) -> list[tuple[str, str | bytes]]:
    """(where, content) pieces of one file: raw bytes plus decoded tables / archive members."""
    data = path.read_bytes()
    pieces: list[tuple[str, str | bytes]] = [(str(path), data)]
    if path.suffix == ".parquet":
        pieces.append((f"{path} (table)", _parquet_text(path)))
    elif path.suffix == ".duckdb":
        pieces.append((f"{path} (tables)", _duckdb_text(path)))
    elif path.suffix == ".gz":
        pieces.append((f"{path} (gunzipped)", gzip.decompress(data)))
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            pieces += [(f"{path}!{name}", archive.read(name)) for name in archive.namelist()]
    return pieces


def scan_tree(root: Path, skip: Path | None = None) -> tuple[dict[str, list[str]], set[str]]:
    """Needles found per file under root (skipping `skip`), and the files searched."""
    found: dict[str, list[str]] = {}
    searched: set[str] = set()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if skip is not None and path.is_relative_to(skip):
            continue
        searched.add(str(path))
        for where, content in _file_text(path):
            if hits := leaks(content):
                found[where] = hits
    return found, searched


def _mlflow_text(params, paths) -> str:
    from mlflow import MlflowClient

    from cxr_assets.registry.tracking import tracking_uri

    uri = tracking_uri(params, paths)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    texts = []
    for experiment in client.search_experiments():
        texts.append(f"{experiment.name} {experiment.tags} {experiment.artifact_location}")
        for run in client.search_runs([experiment.experiment_id]):
            texts += [str(run.data.params), str(run.data.tags), str(sorted(run.data.metrics)),
                      str(run.info)]
            for item in client.list_artifacts(run.info.run_id):
                texts.append(item.path)
    for model in client.search_registered_models():
        texts.append(f"{model.name} {model.description} {model.tags} {model.aliases}")
        for version in client.search_model_versions(f"name = '{model.name}'"):
            texts.append(f"{version.version} {version.description} {version.tags} {version.source}")
    assert len(texts) > 3, "MLflow holds nothing: the scan would prove nothing"
    return "\n".join(texts)


# --- planting --------------------------------------------------------------------------------------

def plant_dicom_canaries(raw: Path, every: int = 5) -> list[Path]:
    import pydicom
    from pydicom import config

    planted = sorted(raw.rglob("*.dcm"))[::every]
    before = config.settings.reading_validation_mode, config.settings.writing_validation_mode
    # Planting must not warn the values itself (pydicom checks a new element with either mode).
    config.settings.reading_validation_mode = config.settings.writing_validation_mode = config.IGNORE
    try:
        for path in planted:
            ds = pydicom.dcmread(path)
            for keyword, value in DICOM_CANARIES.items():
                setattr(ds, keyword, value)
            ds.save_as(path)
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = before
    return planted


def plant_report_canaries(raw: Path, every: int = 3) -> list[Path]:
    planted = sorted(raw.rglob("s*.txt"))[::every]
    for path in planted:
        with path.open("ab") as handle:
            handle.write(f"\n{REPORT_CANARY}\n".encode())
    return planted


def _materialize(root: Path, instance, names):
    from dags_defs.assets import pipeline_assets
    from dags_defs.resources import DvcRecorder, PipelineConfig

    return materialize(
        pipeline_assets, selection=list(names),
        resources={"pipeline": PipelineConfig(root=str(root)), "dvc": DvcRecorder(enabled=False)},
        instance=instance, raise_on_error=False,
    )


def test_planted_phi_never_leaves_ingestion(tmp_path, tiny_llm, capfd, caplog, recwarn):
    from dagster import serialize_value

    from cxr_assets.config import load_params
    from cxr_assets.ingest.dicom import read_header
    from cxr_assets.paths import ProjectPaths

    caplog.set_level(logging.DEBUG)
    root = tmp_path / "project"
    write_params(root, tiny_params(root, tiny_llm, ingest={"phi_policy": "strip"}))
    params = load_params(root / "params.yaml")
    paths = ProjectPaths.from_params(params, root)
    instance = DagsterInstance.ephemeral()

    first = _materialize(root, instance, ["demo_data"])
    assert first.success
    dicoms = plant_dicom_canaries(paths.raw_dir)
    reports = plant_report_canaries(paths.raw_dir)
    assert len(dicoms) >= 5 and len(reports) >= 5
    header = read_header(dicoms[0])  # planted, and seen as identifying (names only)
    assert set(DICOM_CANARIES) <= set(header.phi_tags) and not leaks(str(header))

    second = _materialize(root, instance, [n for n in STAGE_NAMES if n != "demo_data"])
    assert second.success, [e.message for e in second.all_events if e.is_failure]

    # The planted inputs were catalogued, the reports masked (not dropped).
    images = pl.read_parquet(paths.images_table)
    assert {str(p) for p in dicoms} <= set(images["image_path"])
    masked = pl.read_parquet(paths.catalog_reports_table).filter(
        pl.col("report_origin").is_in([str(p) for p in reports]))
    assert masked.height == len(reports)
    assert masked["report_text"].str.contains("Dictated by Dr. [PHI] on [PHI], MRN [PHI], "
                                              "call [PHI].", literal=True).all()
    assert all({"date", "mrn", "name", "phone"} <= set(k.split(",")) for k in masked["phi_masked"])
    texts = pl.read_parquet(paths.report_texts_table)
    study_ids = [p.stem for p in reports]
    assert texts.filter(pl.col("study_id").is_in(study_ids))["report_text"].str.contains(
        "[PHI]", literal=True).sum() == len(reports)

    # The search sees canaries where they are: the raw inputs (the control).
    in_raw, _ = scan_tree(paths.raw_dir)
    assert {str(p) for p in [*dicoms, *reports]} <= set(in_raw)

    # Files: every table, model, report and artifact the chain wrote under the project root.
    found, searched = scan_tree(root, skip=paths.raw_dir)
    for must in (paths.catalog_db, paths.studies_table, paths.images_table,
                 paths.catalog_reports_table, paths.quarantine_table, paths.report_texts_table,
                 paths.report_embeddings_table, paths.study_embeddings_table):
        assert str(must) in searched, f"{must} was not written: the scan would miss it"
    assert any("mlartifacts" in p for p in searched) and any(p.endswith("mlflow.db") for p in searched)
    assert not found, f"canary values leaked into files: {found}"

    # Dagster: the event log of both runs (messages, materialization metadata, check results).
    for run in (first, second):
        for entry in instance.all_logs(run.run_id):
            assert not leaks(serialize_value(entry)), entry
        for event in run.get_asset_materialization_events():
            assert not leaks(serialize_value(event.materialization.metadata)), event.asset_key

    # MLflow: params, tags, registered models and artifact listings.
    assert not leaks(_mlflow_text(params, paths))

    # Everything printed or logged while the chain ran.
    out, err = capfd.readouterr()
    assert out or err, "nothing captured: Dagster's console log was expected on stderr"
    assert not leaks(out) and not leaks(err)
    assert not leaks(caplog.text)
    assert not leaks("\n".join(str(r.msg) + str(r.args) for r in caplog.records))
    assert not leaks("\n".join(str(w.message) for w in recwarn))


def test_each_search_catches_a_canary_planted_in_its_decoded_output(tmp_path, tiny_llm):
    """Negative control for the searches above: a canary planted where only decoding shows it
    (a compressed Parquet column, a DuckDB table, Dagster metadata, an MLflow param) is found."""
    import duckdb
    import mlflow
    from dagster import MaterializeResult, asset, serialize_value

    from cxr_assets.config import load_params
    from cxr_assets.paths import ProjectPaths
    from cxr_assets.registry.tracking import tracking_uri

    canary = "Dictated by Dr. Zyxwvut Canary"
    # Parquet: gzip pages (Huffman-coded), no min/max statistics: a byte search misses the text,
    # the decoded table shows it.
    table = tmp_path / "leak.parquet"
    pl.DataFrame({"report": [canary * 20] * 200}).write_parquet(table, compression="gzip",
                                                                  statistics=False)
    pieces = dict(_file_text(table))
    assert not leaks(pieces[str(table)]), "control not hidden: the bytes already show the canary"
    assert leaks(pieces[f"{table} (table)"])

    # DuckDB: a table row (DuckDB compresses its blocks as well).
    db = tmp_path / "leak.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE reports AS SELECT ? AS report FROM range(500)", [canary])
    con.close()
    assert leaks(dict(_file_text(db))[f"{db} (tables)"])
    found, searched = scan_tree(tmp_path)
    assert {f"{table} (table)", f"{db} (tables)"} <= set(found) and str(db) in searched

    # Dagster: materialization metadata, read back from the instance's event log.
    @asset
    def leaky_asset():  # no return annotation: this module's annotations are strings
        return MaterializeResult(metadata={"note": canary})

    instance = DagsterInstance.ephemeral()
    result = materialize([leaky_asset], instance=instance)
    assert any(leaks(serialize_value(entry)) for entry in instance.all_logs(result.run_id))

    # MLflow: a run param in the project's own store, found by the same _mlflow_text.
    root = tmp_path / "project"
    write_params(root, tiny_params(root, tiny_llm))
    params = load_params(root / "params.yaml")
    paths = ProjectPaths.from_params(params, root)
    mlflow.set_tracking_uri(tracking_uri(params, paths))
    try:
        experiment = mlflow.set_experiment("phi-control")
        with mlflow.start_run(experiment_id=experiment.experiment_id):
            mlflow.log_param("note", canary)
            mlflow.set_tag("a", "b")
            mlflow.log_metric("m", 1.0)
        assert leaks(_mlflow_text(params, paths))
    finally:
        mlflow.set_tracking_uri(None)
