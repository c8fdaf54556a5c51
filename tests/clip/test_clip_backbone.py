"""Vision backbone factory: building, offline weight loading, channel and pos-embed adaptation."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from cxr_assets.vision.backbone import create_vision_backbone


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def test_resnet_builds_with_one_channel():
    model = create_vision_backbone("resnet10t", in_chans=1).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 1, 32, 32))
    assert out.shape == (2, model.num_features)
    assert model.num_features == 512


def test_vit_builds_at_requested_size():
    model = create_vision_backbone("vit_tiny_patch16_224", in_chans=1, image_size=64).eval()
    assert model.pos_embed.shape == (1, 1 + 4 * 4, 192)
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 192)


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown timm vision backbone 'resnet_does_not_exist'"):
        create_vision_backbone("resnet_does_not_exist")


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="vision pretrained weights not found"):
        create_vision_backbone("resnet10t", pretrained_path=str(tmp_path / "nope.safetensors"))


@pytest.mark.parametrize("suffix", ["safetensors", "pth"])
def test_rgb_weights_load_into_grayscale_resnet(tmp_path, suffix):
    torch.manual_seed(0)
    rgb = create_vision_backbone("resnet10t", in_chans=3)
    state = _state(rgb)
    # A classifier from an ImageNet checkpoint must be dropped, not break loading.
    state["fc.weight"] = torch.randn(10, rgb.num_features)
    state["fc.bias"] = torch.randn(10)
    file = tmp_path / f"weights.{suffix}"
    if suffix == "safetensors":
        save_file(state, str(file))
    else:
        torch.save({"state_dict": state}, file)

    gray = create_vision_backbone("resnet10t", in_chans=1, pretrained_path=str(file))
    loaded = gray.state_dict()
    first = "conv1.0.weight"
    assert loaded[first].shape[1] == 1
    torch.testing.assert_close(loaded[first], state[first].sum(dim=1, keepdim=True))
    for key, value in loaded.items():
        if key != first:
            assert torch.equal(value, state[key]), key


def test_vit_weights_are_resampled_and_channel_adapted(tmp_path):
    torch.manual_seed(0)
    source = create_vision_backbone("vit_tiny_patch16_224", in_chans=3)  # 14 x 14 grid
    state = _state(source)
    # A constant patch-grid embedding must stay that constant after interpolation.
    state["pos_embed"][:, 1:] = 0.25
    file = tmp_path / "vit.safetensors"
    save_file(state, str(file))

    model = create_vision_backbone(
        "vit_tiny_patch16_224", in_chans=1, pretrained_path=str(file), image_size=64
    )
    loaded = model.state_dict()
    assert loaded["pos_embed"].shape == (1, 17, 192)
    # The class-token position is kept as is; only the patch grid is interpolated.
    assert torch.equal(loaded["pos_embed"][:, 0], state["pos_embed"][:, 0])
    torch.testing.assert_close(loaded["pos_embed"][:, 1:], torch.full((1, 16, 192), 0.25))
    torch.testing.assert_close(
        loaded["patch_embed.proj.weight"], state["patch_embed.proj.weight"].sum(1, keepdim=True)
    )
    assert torch.equal(loaded["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])


def test_weights_of_another_architecture_are_refused(tmp_path):
    file = tmp_path / "resnet.safetensors"
    save_file(_state(create_vision_backbone("resnet10t", in_chans=1)), str(file))
    with pytest.raises(ValueError, match="does not fit the model"):
        create_vision_backbone("vit_tiny_patch16_224", image_size=64, pretrained_path=str(file))
