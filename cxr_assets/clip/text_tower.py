"""Online text tower: the adapted report encoder run inside CLIP training with LoRA on attention.

This is the LLM2CLIP4CXR setting: instead of a frozen encoder whose report embeddings are
cached, the encoder (bidirectional LLM + pooling) runs every step and low-rank adapters on its
attention projections are trained with the CLIP loss. It costs an LLM forward and backward per
step (see benchmarks/bench_clip.py) but lets the text side adapt and makes text augmentation
possible: `shuffle_sentences` reorders the sentences of each report section with probability p.

Saved models keep the LoRA weights merged into a plain TextEncoder folder (`text_encoder/` next
to the CLIP weights), so inference needs neither peft nor the training configuration.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

# "FINDINGS:", "IMPRESSION:", "COMPARISON:" ... (upper-case words before a colon).
_HEADING = re.compile(r"(\b[A-Z][A-Z /&-]{2,}:)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def shuffle_sentences(text: str, p: float, generator: torch.Generator) -> str:
    """Shuffle the sentences inside each section of `text`, each section with probability `p`.

    Section headings stay in place and sentences never cross sections, so the report keeps
    its meaning (radiology sentences are largely order-independent within a section).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"shuffle probability must be in [0, 1], got {p}")
    out = []
    for part in _HEADING.split(text):
        if not part.strip():
            continue
        if _HEADING.fullmatch(part):
            out.append(part)
            continue
        sentences = [s for s in _SENTENCE_END.split(part.strip()) if s]
        if len(sentences) > 1 and torch.rand(1, generator=generator).item() < p:
            order = torch.randperm(len(sentences), generator=generator).tolist()
            sentences = [sentences[i] for i in order]
        out.append(" ".join(sentences))
    return " ".join(out)


class OnlineTextTower(nn.Module):
    """A TextEncoder's body (+ pooling head) as a trainable module: tokenized batch -> [B, dim]."""

    def __init__(self, encoder: Any, lora: Any | None = None) -> None:
        super().__init__()
        self.encoder = encoder  # settings and tokenizer; its body is registered below
        body = encoder.model
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            body.requires_grad_(False)
            config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                target_modules=list(lora.target_modules))
            body = get_peft_model(body, config)
        else:
            body.requires_grad_(False)
        self.body = body
        self.head = encoder.pooling_head
        if self.head is not None:
            self.head.requires_grad_(False)
        self.dim = int(encoder.dim)
        # The encoder's fitted post-processing as fixed buffers: the online tower embeds exactly
        # as TextEncoder.encode does (and as the cached tower's stored embeddings are).
        pp = encoder.postprocess
        self.register_buffer("pp_mean", None if pp is None else torch.from_numpy(pp.mean.copy()))
        self.register_buffer("pp_scale", None if pp is None else torch.from_numpy(pp.scale.copy()))

    @classmethod
    def from_folder(cls, folder: Path, lora: Any | None = None) -> OnlineTextTower:
        from cxr_assets.text.encoder import TextEncoder

        return cls(TextEncoder.from_pretrained(Path(folder)), lora)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        from cxr_assets.text.tokenization import tokenize_with_instruction

        return tokenize_with_instruction(self.encoder.tokenizer, list(texts),
                                         self.encoder.instruction or None, self.encoder.max_length)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        from cxr_assets.text.pooling import embed_batch

        pooled = embed_batch(self.body, batch, self.encoder.pooling, self.head,
                             self.encoder.mean_taps)
        if self.encoder.pooling == "mean_and_latent_attention":  # as TextEncoder.finish does
            from cxr_assets.text.pooling import mean_and_head

            return mean_and_head(pooled, self.encoder.mean_weight, self.pp_mean, self.pp_scale,
                                 head_width=self.encoder.hidden_size)
        if self.pp_mean is not None:
            pooled = (pooled - self.pp_mean) / self.pp_scale
        return pooled

    def merged_encoder(self) -> Any:
        """A TextEncoder with the LoRA weights folded in (a copy; training state untouched)."""
        from cxr_assets.text.encoder import TextEncoder

        body = copy.deepcopy(self.body)
        if hasattr(body, "merge_and_unload"):
            body = body.merge_and_unload()
        enc = self.encoder
        return TextEncoder(body, enc.tokenizer, enc.pooling, enc.instruction, enc.max_length,
                           base_model=enc.base_model, pooling_head=enc.pooling_head,
                           bidirectional=enc.bidirectional, postprocess=enc.postprocess)
