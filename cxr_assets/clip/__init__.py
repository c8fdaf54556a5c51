"""Dual-tower CLIP: model (`clip.model`), loss (`clip.loss`) and trainer (`clip.train`).

Import the submodules directly; this package import stays cheap (no torch import).
"""
