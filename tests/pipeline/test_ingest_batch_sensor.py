"""A batch dropped into ingest.drop_dir is seen by the sensor, becomes a partition and reaches the catalog."""

from __future__ import annotations

import numpy as np
import polars as pl
import yaml
from dagster import AssetKey, DagsterInstance, SensorResult, build_sensor_context

from tests.helpers import REPO
from tests.ingest.conftest import gradient, write_dicom


def _study(raw, patient: str, study: str, seed: int) -> None:
    folder = raw / "files" / patient[:3] / patient / study
    write_dicom(folder / "img.dcm", gradient(16, 16, 250 - seed, np.uint8))
    (folder.parent / f"{study}.txt").write_text(f"FINDINGS: Lungs are clear.\nIMPRESSION: Normal study {seed}.")


def test_sensor_registers_partition_and_job_ingests_it(tmp_path, monkeypatch):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["paths"].update(raw_dir="raw", catalog_dir="catalog", image_cache_dir="cache")
    params["ingest"].update(drop_dir="incoming", image_size=32, workers=1)
    params["quality"]["min_studies"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("CXR_PROJECT_ROOT", str(tmp_path))
    for i in range(3):
        _study(tmp_path / "raw", f"p1000000{i}", f"s5000000{i}", i)

    from dags_defs.definitions import defs, new_ingest_batch_sensor

    instance = DagsterInstance.ephemeral()
    pipeline = defs.resources["pipeline"]
    context = build_sensor_context(instance=instance, resources={"pipeline": pipeline})
    assert "no new batch folder" in new_ingest_batch_sensor(context).skip_message

    _study(tmp_path / "incoming" / "2026-12-01", "p20000001", "s60000001", 9)
    result = new_ingest_batch_sensor(build_sensor_context(instance=instance, resources={"pipeline": pipeline}))
    assert isinstance(result, SensorResult)
    assert [r.partition_key for r in result.run_requests] == ["2026-12-01"]
    assert result.dynamic_partitions_requests[0].partition_keys == ["2026-12-01"]

    instance.add_dynamic_partitions("ingest_batches", ["2026-12-01"])
    run = defs.resolve_job_def("ingest_batch_job").execute_in_process(
        partition_key="2026-12-01", instance=instance)
    assert run.success
    studies = pl.read_parquet(tmp_path / "catalog" / "studies.parquet")
    assert studies.filter(pl.col("batch_id") == "2026-12-01")["study_id"].to_list() == ["s60000001"]
    assert studies.height == 4
    reports = pl.read_parquet(tmp_path / "catalog" / "report_texts.parquet")
    assert "s60000001" in reports["study_id"].to_list()
    batch = instance.get_latest_materialization_event(AssetKey("ingest_batch")).asset_materialization
    assert batch.partition == "2026-12-01" and batch.metadata["n_studies"].value == 1

    # Once registered, the sensor does not request the same batch again.
    again = new_ingest_batch_sensor(build_sensor_context(instance=instance, resources={"pipeline": pipeline}))
    assert "no new batch folder" in again.skip_message
