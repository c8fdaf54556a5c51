"""Dual-tower CLIP: model (`clip.model`), loss (`clip.loss`) and trainer (`clip.train`).

The trainer's parts follow open_clip's training package: `clip.data` (pairs, step batches),
`clip.schedule` (AdamW groups, warmup + cosine), `clip.distributed` (process group),
`clip.gradcache` (one step's gradients) and `clip.train` (the loop). `clip.pairs` builds the
image-report pairs from the catalog, `clip.from_catalog` trains on them, and `clip.launch`
runs that under torchrun.

Import the submodules directly; this package import stays cheap (no torch import).
"""
