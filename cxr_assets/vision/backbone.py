"""timm vision backbone factory with offline, channel- and size-adapting weight loading.

Nothing is ever downloaded: models are built with `pretrained=False` and weights come only from
an explicit local file. Such a file is usually an RGB (3-channel) ImageNet/CLIP checkpoint at the
model's default resolution, while CXRs are 1-channel and may run at another size, so the first
convolution is adapted (3 -> 1 by summing) and ViT absolute position embeddings are resampled.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_log = logging.getLogger(__name__)


def _create_timm(name: str, in_chans: int, image_size: int | None) -> torch.nn.Module:
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ValueError(f"unknown timm vision backbone {name!r}{hint}")
    kwargs = {"pretrained": False, "num_classes": 0, "in_chans": in_chans}
    if image_size is None:
        return timm.create_model(name, **kwargs)
    try:
        # Only models with a fixed token grid (ViT family) take img_size; CNNs do not need it.
        return timm.create_model(name, img_size=image_size, **kwargs)
    except TypeError as error:
        if "img_size" not in str(error):
            raise
        return timm.create_model(name, **kwargs)


def _first_conv_keys(model: torch.nn.Module) -> list[str]:
    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if not first:
        return []
    names = [first] if isinstance(first, str) else list(first)
    return [f"{n}.weight" for n in names]


def _classifier_prefixes(model: torch.nn.Module) -> list[str]:
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if not head:
        return []
    names = [head] if isinstance(head, str) else list(head)
    return [f"{n}." for n in names]


def adapt_state_dict(
    model: torch.nn.Module, state_dict: dict, source: str = "<state_dict>"
) -> dict:
    """Make a checkpoint fit `model`: drop the classifier, adapt first-conv channels, resample
    ViT position embeddings. Raises ValueError naming the key on any other shape mismatch."""
    from timm.layers import resample_abs_pos_embed
    from timm.models import adapt_input_conv

    target = model.state_dict()
    heads = _classifier_prefixes(model)
    # The backbone is built with num_classes=0, so checkpoint classifier weights have no home.
    out = {k: v for k, v in state_dict.items() if not any(k.startswith(h) for h in heads)}

    in_chans = None
    for key in _first_conv_keys(model):
        if key in out and key in target and out[key].shape[1] != target[key].shape[1]:
            in_chans = target[key].shape[1]
            out[key] = adapt_input_conv(in_chans, out[key])

    if (
        "pos_embed" in out
        and "pos_embed" in target
        and out["pos_embed"].shape != target["pos_embed"].shape
    ):
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        if grid is None:
            raise ValueError(f"{source}: pos_embed shape mismatch and model has no patch grid")
        prefix = (
            0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
        )
        out["pos_embed"] = resample_abs_pos_embed(
            out["pos_embed"], new_size=list(grid), num_prefix_tokens=prefix
        )

    for key, value in out.items():
        if key in target and tuple(value.shape) != tuple(target[key].shape):
            raise ValueError(
                f"{source}: weight {key!r} has shape {tuple(value.shape)}, "
                f"model expects {tuple(target[key].shape)}"
            )
    return out


def load_backbone_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a local safetensors/.pth checkpoint into a timm backbone (adapting as above)."""
    from timm.models import load_state_dict

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"vision pretrained weights not found: {file}")
    try:
        raw = load_state_dict(str(file), use_ema=False)
    except Exception as error:  # corrupt/unsupported file: say which one
        raise ValueError(f"cannot read vision weights file {file}: {error}") from error
    state = adapt_state_dict(model, raw, source=str(file))
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        shown = ", ".join(result.missing_keys[:10])
        raise ValueError(
            f"vision weights file {file} does not fit the model: {len(result.missing_keys)} "
            f"missing keys (e.g. {shown})"
        )
    if result.unexpected_keys:
        _log.warning(
            "ignored %d unexpected keys from %s (e.g. %s)",
            len(result.unexpected_keys),
            file,
            ", ".join(result.unexpected_keys[:5]),
        )


def create_vision_backbone(
    name: str,
    in_chans: int = 1,
    pretrained_path: str | None = None,
    *,
    image_size: int | None = None,
) -> torch.nn.Module:
    """Build a headless timm model (`num_classes=0`, pooled features of size `num_features`).

    `image_size` is passed as `img_size` to models that take it (ViTs); CNNs ignore it.
    `pretrained_path` is an optional local weights file (.safetensors or torch .pth/.bin).
    """
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if image_size is not None and image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    model = _create_timm(name, in_chans, image_size)
    if pretrained_path:
        load_backbone_weights(model, pretrained_path)
    return model
