"""Data quality: Great Expectations contracts (data_contracts/) and patient-level splits.

Import the submodules directly; `contracts` imports Great Expectations only when a suite runs.
"""
