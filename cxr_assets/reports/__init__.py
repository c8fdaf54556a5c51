"""Report text: reading, section splitting and the dataset style profile.

Import the submodules directly (`from cxr_assets.reports.sections import split_sections`).
"""
