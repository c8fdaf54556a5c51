"""LLM2Vec-style adaptation of a base LLM into a report encoder (the `text_encoder` stage's core).

base LLM -> bidirectional attention -> LoRA -> MNTP on reports -> supervised contrastive on
report pairs -> LoRA merged into the weights -> TextEncoder folder.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxr_assets.config import TextEncoderParams


@dataclass
class AdaptationResult:
    encoder_dir: Path
    content_hash: str
    mntp_losses: list[float]
    contrastive_losses: list[float]
    simcse_losses: list[float]
    n_train_reports: int
    n_pairs: int
    seconds: float


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs (LoRA init and dropout draw from torch's global RNG)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def adapt_text_encoder(
    reports: list[str],
    pairs: list[tuple[str, str]],
    params: TextEncoderParams,
    base_cache_dir: Path,
    out_dir: Path,
    seed: int,
    progress: bool = True,
    log_fn: Callable[[str, int, float], None] | None = None,
    hard_negatives: list[str | None] | None = None,
    tasks: list[str] | None = None,
) -> AdaptationResult:
    """Adapt params.base_model on training-split reports and pairs; save the encoder to out_dir.

    hard_negatives: one per pair (e.g. a negation-flipped impression), or None for in-batch
    negatives only. tasks: one task name per pair for single-task batches. log_fn(stage, step, loss) is called after every step, stage in
    {"mntp", "simcse", "contrastive"}.
    The same inputs, params and seed give the same weights (and content_hash) on the same machine.
    """
    from peft import LoraConfig, get_peft_model

    from cxr_assets.text.base_model import load_causal_lm, resolve_base_model
    from cxr_assets.text.bidirectional import enable_bidirectional, is_bidirectional
    from cxr_assets.text.contrastive import train_contrastive
    from cxr_assets.text.encoder import TextEncoder
    from cxr_assets.text.mntp import train_mntp
    from cxr_assets.text.pooling import make_latent_attention

    start = time.perf_counter()
    reports = [r for r in reports if isinstance(r, str) and r.strip()]
    if params.mntp.steps > 0 and not reports:
        raise ValueError(
            "adapt_text_encoder: no non-empty training report for MNTP (mntp.steps > 0)"
        )
    if params.contrastive.steps > 0 and len(pairs) < 2:
        raise ValueError(
            f"adapt_text_encoder: contrastive.steps > 0 needs at least 2 pairs, got {len(pairs)}"
        )

    seed_everything(seed)
    base_dir = resolve_base_model(params.base_model, Path(base_cache_dir))
    model, tokenizer = load_causal_lm(base_dir, params.dtype, params.attn_implementation)
    enable_bidirectional(model)
    if not is_bidirectional(model, tokenizer):
        raise RuntimeError(
            f"{params.base_model}: attention is still causal after enable_bidirectional"
        )

    lora = params.lora
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            bias="none",
        ),
    )

    def stage_log(stage: str) -> Callable[[int, float], None] | None:
        return None if log_fn is None else (lambda step, loss: log_fn(stage, step, loss))

    if params.contrastive.gradient_checkpointing:
        # Recompute activations in backward: less memory for long reports / big batches.
        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model.enable_input_require_grads()
    head = None
    if params.pooling == "latent_attention":
        head = make_latent_attention(
            int(model.config.hidden_size),
            params.latent_attention.num_latents,
            params.latent_attention.num_heads,
            seed=seed,
        )

    mntp_losses = train_mntp(
        peft_model,
        tokenizer,
        reports,
        params.mntp,
        params.max_length,
        seed,
        progress=progress,
        log_fn=stage_log("mntp"),
    )
    simcse_losses: list[float] = []
    if params.contrastive.simcse_steps > 0 and len(reports) >= 2:
        # Unsupervised SimCSE: a report is its own positive, the two views differ by dropout.
        simcse_losses = train_contrastive(
            peft_model, tokenizer, [(r, r) for r in reports], params.contrastive,
            params.instruction, params.pooling, params.max_length, seed + 1,
            progress=progress, log_fn=stage_log("simcse"), pooling_head=head,
            steps=params.contrastive.simcse_steps,
        )
    contrastive_losses = train_contrastive(
        peft_model,
        tokenizer,
        pairs,
        params.contrastive,
        params.instruction,
        params.pooling,
        params.max_length,
        seed,
        hard_negatives=hard_negatives,
        progress=progress,
        log_fn=stage_log("contrastive"),
        tasks=tasks,
        pooling_head=head,
    )
    if params.contrastive.gradient_checkpointing:
        peft_model.gradient_checkpointing_disable()
    merged = peft_model.merge_and_unload()
    encoder = TextEncoder(
        merged,
        tokenizer,
        params.pooling,
        params.instruction,
        params.max_length,
        base_model=params.base_model,
        pooling_head=head,
    )
    out_dir = Path(out_dir)
    encoder.save_pretrained(out_dir)  # atomic: tmp folder + rename
    return AdaptationResult(
        encoder_dir=out_dir,
        content_hash=encoder.content_hash,
        mntp_losses=mntp_losses,
        contrastive_losses=contrastive_losses,
        simcse_losses=simcse_losses,
        n_train_reports=len(reports),
        n_pairs=len(pairs),
        seconds=time.perf_counter() - start,
    )
