"""Evaluation: image<->report retrieval metrics (`evaluate.retrieval`) and plots (`evaluate.plots`).

Import the submodules directly; this package import is cheap (no numpy/matplotlib import).
"""
