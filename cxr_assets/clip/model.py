"""Dual-tower CLIP over a timm image backbone and cached (frozen) report embeddings.

Vision tower: backbone -> Linear(num_features, embed_dim). Text tower: the report encoder runs
upstream and its pooled embeddings are cached, so only the LLM2CLIP4CXR projection head,
LayerNorm(text_dim) -> Linear(text_dim, embed_dim), lives here. Both outputs are L2-normalized
and compared with exp(logit_scale) (standard CLIP, METHOD_NOTES 2.6).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cxr_assets.vision.backbone import create_vision_backbone

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "clip_config.json"
FORMAT_VERSION = 1


@dataclass
class ClipModelConfig:
    vision_backbone: str
    image_size: int
    text_dim: int
    embed_dim: int
    init_logit_scale: float
    max_logit_scale: float
    text_encoder_hash: str = ""

    def __post_init__(self) -> None:
        for name in ("image_size", "text_dim", "embed_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ClipModelConfig.{name} must be a positive int, got {value!r}")
        if not 0.0 <= self.init_logit_scale <= self.max_logit_scale:
            raise ValueError(
                "ClipModelConfig needs 0 <= init_logit_scale <= max_logit_scale, got "
                f"{self.init_logit_scale} and {self.max_logit_scale}"
            )


class TextAdapter(nn.Module):
    """Projection of cached report embeddings (LayerNorm -> Linear)."""

    def __init__(self, text_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(text_dim)
        self.proj = nn.Linear(text_dim, embed_dim)

    def forward(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(text_embeddings))


class DualTowerClip(nn.Module):
    def __init__(self, config: ClipModelConfig, vision_pretrained_path: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.visual = create_vision_backbone(
            config.vision_backbone,
            in_chans=1,
            pretrained_path=vision_pretrained_path,
            image_size=config.image_size,
        )
        self.visual_proj = nn.Linear(self.visual.num_features, config.embed_dim)
        self.text_adapter = TextAdapter(config.text_dim, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep the log temperature in [0, max_logit_scale] (call after every optimizer step)."""
        self.logit_scale.clamp_(0.0, self.config.max_logit_scale)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 1, S, S] normalized images -> L2-normalized [B, embed_dim]."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"encode_image expects [B, 1, H, W] images, got {tuple(images.shape)}")
        return F.normalize(self.visual_proj(self.visual(images)), dim=-1)

    def encode_text(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """[B, text_dim] cached report embeddings -> L2-normalized [B, embed_dim]."""
        if text_embeddings.ndim != 2 or text_embeddings.shape[1] != self.config.text_dim:
            raise ValueError(
                f"encode_text expects [B, {self.config.text_dim}] text embeddings, "
                f"got {tuple(text_embeddings.shape)}"
            )
        return F.normalize(self.text_adapter(text_embeddings), dim=-1)

    def forward(
        self, images: torch.Tensor, text_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image features, text features, raw logit_scale) ready for `clip_loss`."""
        return self.encode_image(images), self.encode_text(text_embeddings), self.logit_scale


def save_clip_model(model: DualTowerClip, out_dir: Path) -> None:
    """Write model.safetensors + clip_config.json into `out_dir` (created if missing)."""
    from safetensors.torch import save_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out / WEIGHTS_FILE), metadata={"format": "cxr_assets.clip"})
    payload = {"format_version": FORMAT_VERSION, **asdict(model.config)}
    (out / CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def load_clip_config(model_dir: Path) -> ClipModelConfig:
    file = Path(model_dir) / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"CLIP model config not found: {file}")
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"CLIP model config {file} is not valid JSON: {error}") from None
    version = raw.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{file}: unsupported format_version {version!r} (expected {FORMAT_VERSION})"
        )
    known = {f.name for f in fields(ClipModelConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{file}: unknown config keys {unknown}")
    return ClipModelConfig(**raw)


def load_clip_model(model_dir: Path) -> DualTowerClip:
    """Rebuild a saved model (no pretrained file needed: all weights are in the safetensors)."""
    from safetensors.torch import load_model

    config = load_clip_config(model_dir)
    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"CLIP model weights not found: {weights}")
    model = DualTowerClip(config)
    load_model(model, str(weights), strict=True)
    return model.eval()
