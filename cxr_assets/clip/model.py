"""Dual-tower CLIP over a timm image backbone and cached (frozen) report embeddings.

Vision tower: backbone -> Linear(num_features, embed_dim). Text tower: the report encoder runs
upstream and its pooled embeddings are cached, so only the LLM2CLIP4CXR projection head,
LayerNorm(text_dim) -> Linear(text_dim, embed_dim), lives here. Both outputs are L2-normalized
and compared with exp(logit_scale) (standard CLIP, METHOD_NOTES 2.6).
"""

from __future__ import annotations

import json
import math
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
    loss: str = "infonce"  # infonce | siglip | reference (see clip.loss)
    text_adapter: str = "linear"  # linear: LayerNorm + Linear; mlp: residual MLP blocks
    adapter_blocks: int = 2
    in_chans: int = 1  # 3: the grayscale image is replicated for RGB-pretrained stems
    text_tower: str = "cached"  # cached: embeddings in; lora: tokenized reports in (online LLM)

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
        if self.loss not in ("infonce", "siglip", "reference"):
            raise ValueError(f"ClipModelConfig.loss must be infonce/siglip/reference, got {self.loss!r}")
        if self.text_adapter not in ("linear", "mlp"):
            raise ValueError(f"ClipModelConfig.text_adapter must be linear/mlp, got {self.text_adapter!r}")
        if self.in_chans not in (1, 3):
            raise ValueError(f"ClipModelConfig.in_chans must be 1 or 3, got {self.in_chans!r}")


class TextAdapter(nn.Module):
    """Projection of cached report embeddings (LayerNorm -> Linear)."""

    def __init__(self, text_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(text_dim)
        self.proj = nn.Linear(text_dim, embed_dim)

    def forward(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(text_embeddings))


class ResidualMlpAdapter(nn.Module):
    """Deeper adapter for a frozen text encoder: residual pre-norm MLP blocks, then LN + Linear."""

    def __init__(self, text_dim: int, embed_dim: int, blocks: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(text_dim),
                nn.Linear(text_dim, 2 * text_dim),
                nn.GELU(),
                nn.Linear(2 * text_dim, text_dim),
            )
            for _ in range(blocks)
        )
        self.norm = nn.LayerNorm(text_dim)
        self.proj = nn.Linear(text_dim, embed_dim)

    def forward(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        x = text_embeddings
        for block in self.blocks:
            x = x + block(x)
        return self.proj(self.norm(x))


TEXT_ENCODER_DIR = "text_encoder"


class DualTowerClip(nn.Module):
    def __init__(
        self,
        config: ClipModelConfig,
        vision_pretrained_path: str | None = None,
        text_tower: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if (config.text_tower == "lora") != (text_tower is not None):
            raise ValueError(
                f"ClipModelConfig.text_tower={config.text_tower!r} needs "
                f"{'an online text tower module' if text_tower is None else 'no text tower'}"
            )
        self.config = config
        self.text_tower = text_tower
        self.visual = create_vision_backbone(
            config.vision_backbone,
            in_chans=config.in_chans,
            pretrained_path=vision_pretrained_path,
            image_size=config.image_size,
        )
        # Pooled output width: timm models with a pre-logits head (MobileNetV3, ...) emit
        # head_hidden_size features, not num_features.
        width = getattr(self.visual, "head_hidden_size", None) or self.visual.num_features
        self.visual_proj = nn.Linear(width, config.embed_dim)
        if config.text_adapter == "mlp":
            self.text_adapter = ResidualMlpAdapter(
                config.text_dim, config.embed_dim, config.adapter_blocks
            )
        else:
            self.text_adapter = TextAdapter(config.text_dim, config.embed_dim)
        init = float(config.init_logit_scale)
        # Reference mode multiplies by the parameter itself: start it at the same temperature.
        self.logit_scale = nn.Parameter(
            torch.tensor(math.exp(init) if config.loss == "reference" else init)
        )
        if config.loss == "siglip":
            # SigLIP's bias starts strongly negative: almost every pair is a negative.
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    @property
    def normalizes_in_forward(self) -> bool:
        """False in reference mode: the loss sees raw projected features."""
        return self.config.loss != "reference"

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 1, S, S] normalized images -> projected (unnormalized) features."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"image tower expects [B, 1, H, W] images, got {tuple(images.shape)}")
        if self.config.in_chans == 3:
            images = images.expand(-1, 3, -1, -1)
        return self.visual_proj(self.visual(images))

    def text_features(self, text_embeddings: torch.Tensor | dict) -> torch.Tensor:
        """[B, text_dim] cached report embeddings (or, with an online tower, a tokenized batch)
        -> projected (unnormalized) features."""
        if isinstance(text_embeddings, dict):
            if self.text_tower is None:
                raise ValueError("a tokenized text batch needs the online text tower (text_tower=lora)")
            text_embeddings = self.text_tower(text_embeddings)
        if text_embeddings.ndim != 2 or text_embeddings.shape[1] != self.config.text_dim:
            raise ValueError(
                f"text tower expects [B, {self.config.text_dim}] text embeddings, "
                f"got {tuple(text_embeddings.shape)}"
            )
        return self.text_adapter(text_embeddings)

    def loss_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image features as the loss consumes them (normalized unless reference mode)."""
        f = self.image_features(images)
        return F.normalize(f, dim=-1) if self.normalizes_in_forward else f

    def loss_text(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        f = self.text_features(text_embeddings)
        return F.normalize(f, dim=-1) if self.normalizes_in_forward else f

    def logit_bias_value(self) -> torch.Tensor | float:
        return self.logit_bias if self.config.loss == "siglip" else 0.0

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep the log temperature in [0, max_logit_scale] (call after every optimizer step)."""
        top = self.config.max_logit_scale
        self.logit_scale.clamp_(0.0, math.exp(top) if self.config.loss == "reference" else top)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 1, S, S] normalized images -> L2-normalized [B, embed_dim]."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"encode_image expects [B, 1, H, W] images, got {tuple(images.shape)}")
        return F.normalize(self.image_features(images), dim=-1)

    def encode_reports(self, texts: list[str]) -> torch.Tensor:
        """Report strings -> L2-normalized [B, embed_dim] through the online text tower."""
        if self.text_tower is None:
            raise ValueError("encode_reports needs the online text tower (text_tower=lora)")
        return F.normalize(self.text_features(self.text_tower.tokenize(texts)), dim=-1)

    def encode_text(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """[B, text_dim] cached report embeddings -> L2-normalized [B, embed_dim]."""
        if text_embeddings.ndim != 2 or text_embeddings.shape[1] != self.config.text_dim:
            raise ValueError(
                f"encode_text expects [B, {self.config.text_dim}] text embeddings, "
                f"got {tuple(text_embeddings.shape)}"
            )
        return F.normalize(self.text_features(text_embeddings), dim=-1)

    def forward(
        self, images: torch.Tensor, text_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image features, text features, raw logit_scale) ready for `clip.loss`."""
        return self.loss_image(images), self.loss_text(text_embeddings), self.logit_scale


def save_clip_model(model: DualTowerClip, out_dir: Path) -> None:
    """Write model.safetensors + clip_config.json into `out_dir` (created if missing)."""
    from safetensors.torch import save_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if model.text_tower is None:
        save_model(model, str(out / WEIGHTS_FILE), metadata={"format": "cxr_assets.clip"})
    else:
        from safetensors.torch import save_file

        # The text tower goes to its own TextEncoder folder, LoRA merged (no peft at inference).
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                 if not k.startswith("text_tower.")}
        save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "cxr_assets.clip"})
        model.text_tower.merged_encoder().save_pretrained(out / TEXT_ENCODER_DIR)
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
    if config.text_tower == "lora":
        from safetensors.torch import load_file

        from cxr_assets.clip.text_tower import OnlineTextTower

        tower = OnlineTextTower.from_folder(Path(model_dir) / TEXT_ENCODER_DIR, lora=None)
        model = DualTowerClip(config, text_tower=tower)
        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        missing = [k for k in missing if not k.startswith("text_tower.")]
        if missing or unexpected:
            raise ValueError(f"{weights}: missing keys {missing[:5]}, unexpected {unexpected[:5]}")
        return model.eval()
    model = DualTowerClip(config)
    load_model(model, str(weights), strict=True)
    return model.eval()
