"""Batch embedding of images and cached report embeddings with a trained CLIP model.

Import the submodules directly (e.g. `cxr_assets.embed.images`); this package import is cheap.
"""
