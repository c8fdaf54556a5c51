"""Synthetic demo dataset: MIMIC-CXR-like DICOM studies with heterogeneous reports.

The project runs end to end from this data when no real data is available.
"""

from cxr_assets.demo.generate import DemoSummary, generate_demo_dataset
from cxr_assets.demo.reports import FINDINGS

__all__ = ["FINDINGS", "DemoSummary", "generate_demo_dataset"]
