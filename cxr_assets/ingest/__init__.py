"""Ingestion: dataset-layout adapters, DICOM header/pixel reading, study catalog, image cache.

Import the submodules directly (`from cxr_assets.ingest.catalog import scan_mimic_layout`);
this package init stays empty so spawn-started cache workers import little.
"""
