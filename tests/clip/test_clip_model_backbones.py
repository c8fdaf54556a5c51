"""Any timm backbone by name: the projection takes the width the pooled output really has."""

from __future__ import annotations

import pytest
import torch

from cxr_assets.clip.model import ClipModelConfig, DualTowerClip


# mobilenetv3 pools through a pre-logits conv head: head_hidden_size (1024) != num_features (288).
@pytest.mark.parametrize("backbone", ["resnet10t", "mobilenetv3_small_050", "convnext_atto"])
def test_backbone_features_reach_the_shared_space(backbone):
    config = ClipModelConfig(vision_backbone=backbone, image_size=64, text_dim=32, embed_dim=16,
                             init_logit_scale=2.6, max_logit_scale=4.6)
    features = DualTowerClip(config).image_features(torch.zeros(2, 1, 64, 64))
    assert features.shape == (2, 16) and torch.isfinite(features).all()
