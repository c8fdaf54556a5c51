"""Vision tower: timm backbone factory and grayscale CXR image transforms.

Import the submodules (`cxr_assets.vision.backbone`, `cxr_assets.vision.transforms`) directly;
this package import stays cheap (no torch/timm import).
"""
