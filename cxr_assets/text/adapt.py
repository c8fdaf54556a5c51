"""LLM2Vec-style adaptation of a base LLM into a report encoder (the `text_encoder` stage's core).

base LLM (or a released encoder, `init_from`) -> bidirectional attention -> LoRA MNTP on reports
-> MNTP LoRA merged -> fresh LoRA, supervised contrastive on report pairs (symmetric, optional
teacher distillation) -> merged -> post-processing fitted on training reports -> TextEncoder folder
(+ optionally a release folder holding only the adapters, head and statistics).

Each stage checkpoints every `checkpoint.every_n_steps` steps; a killed run of the same params
and data resumes from its last checkpoint and takes the same steps as an uninterrupted one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_assets.config import LoraParams, TextEncoderParams

STATE_FILE = "state.pt"
TOKEN_STATES_FILE = "token_states.pt"  # stage three's input, kept until the run succeeds


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
    mntp_eval_loss: tuple[float, float] | None = None  # fixed batch and mask: before, after
    resumed_from: str | None = None
    release_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    head_losses: list[float] = field(default_factory=list)
    # The query adapter's fit (text/query_adapter.py), None when query_adapter.steps is 0.
    query_adapter: Any = None
    # What keys the encoder's report embeddings in the cache (TextEncoder.document_hash).
    document_hash: str = ""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs (LoRA init and dropout draw from torch's global RNG)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def lora_config(lora: LoraParams, n_layers: int) -> Any:
    """peft LoraConfig from params; top_layers restricts it to the last N decoder layers."""
    from peft import LoraConfig

    layers = None
    if lora.top_layers is not None:
        layers = list(range(max(0, n_layers - lora.top_layers), n_layers))
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), bias="none",
                      layers_to_transform=layers)


def run_key(params: TextEncoderParams, seed: int, reports: list[str],
            pairs: list[tuple[str, str]], hard_negatives: list[str | None] | None,
            tasks: list[str] | None) -> str:
    """What a checkpoint must match to be resumed: the training params, seed and data."""
    digest = hashlib.sha256()
    training = params.model_dump(exclude={"evaluation", "mlflow", "checkpoint", "embed_batch_size",
                                        "embed_shards"})
    digest.update(json.dumps({"params": training, "seed": seed}, sort_keys=True).encode())
    for item in (reports, pairs, hard_negatives or [], tasks or []):
        digest.update(json.dumps(item).encode())
    return digest.hexdigest()[:16]


class Checkpointer:
    """One state file per run: stage, completed steps, adapter, optimizer, head, losses."""

    def __init__(self, folder: Path | None, key: str, every: int) -> None:
        self.folder, self.key, self.every = (Path(folder) if folder else None), key, int(every)

    @property
    def file(self) -> Path | None:
        return None if self.folder is None else self.folder / STATE_FILE

    def load(self) -> dict | None:
        import torch

        if self.file is None or not self.file.is_file():
            return None
        state = torch.load(self.file, map_location="cpu", weights_only=False)
        return state if state.get("key") == self.key else None

    def save(self, state: dict) -> None:
        import torch

        if self.file is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{STATE_FILE}.{uuid.uuid4().hex[:8]}"
        torch.save({**state, "key": self.key}, tmp)
        tmp.replace(self.file)  # atomic: a kill mid-write keeps the previous checkpoint

    def due(self, step: int, steps: int) -> bool:
        return self.file is not None and self.every > 0 and (
            (step + 1) % self.every == 0 and step + 1 < steps)

    def clear(self) -> None:
        if self.folder is not None and self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)


def _adapter_state(peft_model: Any) -> dict:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}


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
    checkpoint_dir: Path | None = None,
    release_dir: Path | None = None,
) -> AdaptationResult:
    """Adapt params.base_model on training-split reports and pairs; save the encoder to out_dir.

    hard_negatives: one per pair (e.g. a negation-flipped impression), or None for in-batch
    negatives only. tasks: one task name per pair for single-task batches. log_fn(stage, step,
    loss) is called after every step, stage in {"mntp", "simcse", "contrastive"}.
    release_dir: also write the release folder (adapters + head + post-processing only).
    The same inputs, params and seed give the same weights on the same machine (and the same
    content_hash, unless fitted post-processing statistics differ in their last bits).
    """
    from peft import get_peft_model

    from cxr_assets.text.base_model import load_causal_lm, resolve_base_model
    from cxr_assets.text.bidirectional import enable_bidirectional, is_bidirectional
    from cxr_assets.text.contrastive import train_contrastive
    from cxr_assets.text.encoder import TextEncoder
    from cxr_assets.text.mntp import fixed_batch_loss, train_mntp
    from cxr_assets.text.pooling import (
        HEAD_MODES,
        body_pooling,
        make_latent_attention,
        mean_taps_of,
    )
    from cxr_assets.text.postprocess import EmbeddingPostprocess, fit_sample
    from cxr_assets.text.query_adapter import MIN_REPORTS, fit_query_adapter
    from cxr_assets.text.release import (
        apply_adapters,
        round_lora_to_fp16,
        save_adapter,
        write_release,
    )

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
    notes: list[str] = []
    seed_everything(seed)
    base_dir = resolve_base_model(params.base_model, Path(base_cache_dir))
    model, tokenizer = load_causal_lm(base_dir, params.dtype, params.attn_implementation)
    if params.bidirectional:
        enable_bidirectional(model)
        if not is_bidirectional(model, tokenizer):
            raise RuntimeError(
                f"{params.base_model}: attention is still causal after enable_bidirectional"
            )
    if params.init_from:
        model = apply_adapters(model, _check_release(Path(params.init_from), params))
        notes.append(f"started from release {Path(params.init_from).name}")
        notes += _mean_taps_note(Path(params.init_from), params)
    n_layers = int(model.config.num_hidden_layers)

    key = run_key(params, seed, reports, pairs, hard_negatives, tasks)
    ckpt = Checkpointer(checkpoint_dir, key, params.checkpoint.every_n_steps)
    saved = ckpt.load() if params.checkpoint.resume else None
    resumed_from = None if saved is None else f"{saved['stage']} step {saved['step']}"

    head = None
    if params.pooling in HEAD_MODES:
        released_head = Path(params.init_from or "") / "pooling_head.safetensors"
        if params.init_from and released_head.is_file():
            from cxr_assets.text.encoder_files import load_pooling_head

            head = load_pooling_head(released_head, int(model.config.hidden_size))
        else:
            head = make_latent_attention(int(model.config.hidden_size),
                                         params.latent_attention.num_latents,
                                         params.latent_attention.num_heads, seed=seed)
    adapter_tmp = Path(tempfile.mkdtemp(prefix="cxr-adapters-"))
    adapters: dict[str, Path] = {}  # merged in this order by a release

    # Stage two trains the body with its own pooling: in 'mean_and_latent_attention' the body is
    # mean-pooled and the head waits for stage three.
    stage_two_pooling = body_pooling(params.pooling)
    stage_two_head = head if stage_two_pooling in HEAD_MODES else None

    def stage_log(stage: str) -> Callable[[int, float], None] | None:
        return None if log_fn is None else (lambda step, loss: log_fn(stage, step, loss))

    # Reports for the fixed MNTP evaluation batch are held aside from MNTP training.
    eval_texts = fit_sample(reports, params.mntp.eval_batch_size, seed + 7) \
        if params.mntp.steps > 0 and params.mntp.eval_batch_size > 0 and len(reports) > 2 * params.mntp.eval_batch_size else []
    held = set(eval_texts)
    mntp_texts = [r for r in reports if r not in held]

    mntp_losses: list[float] = list(saved.get("mntp_losses", [])) if saved else []
    contrastive_losses: list[float] = list(saved.get("contrastive_losses", [])) if saved else []
    mntp_eval: tuple[float, float] | None = saved.get("mntp_eval") if saved else None
    simcse_losses: list[float] = []
    head_losses: list[float] = []
    try:
        if params.init_from:
            from cxr_assets.text.release import ADAPTERS_DIR

            for folder in sorted((Path(params.init_from) / ADAPTERS_DIR).iterdir()):
                adapters[f"init_{folder.name.split('_', 1)[-1]}"] = folder
        # ---------------------------------------------------------------- stage 1: MNTP
        peft_model = get_peft_model(model, lora_config(params.lora, n_layers))
        _gradient_checkpointing(peft_model, params.contrastive.gradient_checkpointing)
        # A checkpoint of stage three ("head") holds stage two's final adapter: both are skipped.
        in_contrastive = saved is not None and saved["stage"] in ("contrastive", "head")
        if params.mntp.steps > 0 and not in_contrastive:
            from peft import set_peft_model_state_dict

            start_step, optimizer_state = 0, None
            if saved is not None and saved["stage"] == "mntp":
                set_peft_model_state_dict(peft_model, saved["adapter"])
                start_step, optimizer_state = saved["step"], saved["optimizer"]
            if eval_texts and mntp_eval is None:
                mntp_eval = (fixed_batch_loss(peft_model, tokenizer, eval_texts,
                                              params.mntp.mask_probability, params.max_length),
                             float("nan"))

            def mntp_checkpoint(step: int, optimizer: Any) -> None:
                if ckpt.due(step, params.mntp.steps):
                    ckpt.save({"stage": "mntp", "step": step + 1,
                               "adapter": _adapter_state(peft_model),
                               "optimizer": optimizer.state_dict(),
                               "mntp_losses": mntp_losses, "mntp_eval": mntp_eval})

            train_mntp(peft_model, tokenizer, mntp_texts, params.mntp, params.max_length, seed,
                       progress=progress, log_fn=_collect(stage_log("mntp"), mntp_losses),
                       start_step=start_step, optimizer_state=optimizer_state,
                       on_step=mntp_checkpoint)
            if eval_texts:
                mntp_eval = (mntp_eval[0], fixed_batch_loss(
                    peft_model, tokenizer, eval_texts, params.mntp.mask_probability,
                    params.max_length))
        elif params.mntp.steps > 0 and in_contrastive and params.mntp.merge:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(peft_model, saved["mntp_adapter"])
        mntp_adapter_state = None
        if params.mntp.steps > 0 and params.mntp.merge:
            # llm2vec: merge the MNTP LoRA, then train a fresh LoRA contrastively.
            round_lora_to_fp16(peft_model)
            mntp_adapter_state = _adapter_state(peft_model)
            save_adapter(peft_model, adapter_tmp / "mntp", params.base_model)
            adapters["mntp"] = adapter_tmp / "mntp"
            _gradient_checkpointing(peft_model, False)
            model = peft_model.merge_and_unload()
            seed_everything(seed + 1)  # the fresh LoRA's initialisation
            peft_model = get_peft_model(model, lora_config(params.lora, n_layers))
            _gradient_checkpointing(peft_model, params.contrastive.gradient_checkpointing)

        # ---------------------------------------------------------------- stage 2: contrastive
        if params.contrastive.simcse_steps > 0 and len(reports) >= 2 and not in_contrastive:
            # Unsupervised SimCSE: a report is its own positive, the two views differ by dropout.
            simcse_losses = train_contrastive(
                peft_model, tokenizer, [(r, r) for r in reports], params.contrastive,
                params.instruction, stage_two_pooling, params.max_length, seed + 1,
                progress=progress, log_fn=stage_log("simcse"), pooling_head=stage_two_head,
                steps=params.contrastive.simcse_steps, mean_taps=mean_taps_of(params.mean_pooling),
            )
        start_step, optimizer_state = 0, None
        if in_contrastive:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(peft_model, saved["adapter"])
            if head is not None and saved.get("head") is not None:
                head.load_state_dict(saved["head"])
            start_step, optimizer_state = ((params.contrastive.steps, None)
                                           if saved["stage"] == "head"
                                           else (saved["step"], saved["optimizer"]))
        teacher = None
        if params.contrastive.distill_weight > 0 and params.contrastive.steps > start_step:
            from cxr_assets.text.baselines import MiniLMEncoder

            teacher = MiniLMEncoder()

        def contrastive_checkpoint(step: int, optimizer: Any) -> None:
            if ckpt.due(step, params.contrastive.steps):
                ckpt.save({"stage": "contrastive", "step": step + 1,
                           "adapter": _adapter_state(peft_model),
                           "mntp_adapter": mntp_adapter_state,
                           "head": None if head is None else head.state_dict(),
                           "optimizer": optimizer.state_dict(), "mntp_losses": mntp_losses,
                           "contrastive_losses": contrastive_losses, "mntp_eval": mntp_eval})

        two_pairs, two_negatives, two_tasks = (
            select_tasks(pairs, hard_negatives, tasks, params.contrastive.tasks,
                         "contrastive.tasks") if params.contrastive.steps > 0
            else (pairs, hard_negatives, tasks))
        train_contrastive(
            peft_model, tokenizer, two_pairs, params.contrastive, params.instruction,
            stage_two_pooling, params.max_length, seed, hard_negatives=two_negatives,
            progress=progress, log_fn=_collect(stage_log("contrastive"), contrastive_losses),
            tasks=two_tasks,
            pooling_head=stage_two_head, teacher=teacher, start_step=start_step,
            optimizer_state=optimizer_state, on_step=contrastive_checkpoint,
            mean_taps=mean_taps_of(params.mean_pooling),
        )
        _gradient_checkpointing(peft_model, False)
        if params.contrastive.steps > 0 or not params.mntp.merge:
            round_lora_to_fp16(peft_model)
            name = "contrastive" if params.mntp.merge or params.mntp.steps == 0 else "mntp_contrastive"
            save_adapter(peft_model, adapter_tmp / name, params.base_model)
            adapters[name] = adapter_tmp / name
        # What a stage-three checkpoint needs to rebuild the body without stages one and two.
        body_state = {"adapter": _adapter_state(peft_model), "mntp_adapter": mntp_adapter_state,
                      "mntp_losses": mntp_losses, "contrastive_losses": contrastive_losses,
                      "mntp_eval": mntp_eval} if params.head_training.steps > 0 else {}
        merged = peft_model.merge_and_unload()
        encoder = TextEncoder(merged, tokenizer, params.pooling, params.instruction,
                              params.max_length, base_model=params.base_model,
                              pooling_head=head, bidirectional=params.bidirectional,
                              mean_weight=params.latent_attention.mean_weight,
                              mean_taps=mean_taps_of(params.mean_pooling))

        def fit_postprocess() -> None:
            if params.postprocess.method == "none":
                return
            fit_texts = fit_sample(reports, params.postprocess.n_fit, seed + 11)
            raw = encoder.encode(fit_texts, batch_size=params.embed_batch_size,
                                 progress=progress, postprocess=False)
            # Fitted on the mean-pooled part (all of it, unless a head's output is beside it).
            encoder.postprocess = EmbeddingPostprocess.fit(raw[:, :encoder.mean_width],
                                                           params.postprocess.method)

        beside_mean = params.pooling == "mean_and_latent_attention"
        if beside_mean:  # the head trains on top of the post-processed mean: fit that first
            fit_postprocess()
        if params.head_training.steps > 0:
            resume = saved if saved is not None and saved["stage"] == "head" else None
            head_losses = _train_head(merged, tokenizer, head, pairs, hard_negatives, tasks,
                                      params, seed, progress, stage_log("head"),
                                      encoder.postprocess, ckpt, body_state, resume)
        if not beside_mean:  # the statistics of the final pooled output
            fit_postprocess()
        query_fit = None
        query_reports = fit_sample(reports, params.query_adapter.n_fit, seed + 13)
        if params.query_adapter.steps > 0 and len(query_reports) < MIN_REPORTS:
            notes.append(f"no query adapter: {len(query_reports)} distinct training reports, "
                         f"it needs {MIN_REPORTS}")
        elif params.query_adapter.steps > 0:  # on the final embeddings: fitted last
            # Encoded on the path report_embeddings will take (`encode_path`; auto: the fastest
            # within the fidelity bar), through a shallow copy: the path's converted model is a
            # copy too, so the encoder saved below keeps its PyTorch body.
            fit_encoder = copy.copy(encoder)
            fit_encoder.request_path(params.encode_path, params.embed_batch_size)
            query_fit = fit_query_adapter(fit_encoder, query_reports, params.query_adapter, seed,
                                          batch_size=params.embed_batch_size, progress=progress)
            encoder.query_adapter = query_fit.adapter
            if fit_encoder.path_choice is not None:
                notes.append(f"query adapter fitted on encode path {fit_encoder.path_choice.path}")
        out_dir = Path(out_dir)
        encoder.save_pretrained(out_dir)  # atomic: tmp folder + rename
        if release_dir is not None:
            training = {"n_train_reports": len(reports), "n_pairs": len(pairs), "seed": seed,
                        "mntp_losses": mntp_losses, "contrastive_losses": contrastive_losses,
                        "head_losses": head_losses, "mntp_eval_loss": mntp_eval,
                        "params": params.model_dump(exclude={"evaluation", "mlflow"})}
            write_release(Path(release_dir), encoder, adapters,
                          {"training.json": json.dumps(training, indent=2) + "\n"})
    finally:
        shutil.rmtree(adapter_tmp, ignore_errors=True)
    ckpt.clear()
    return AdaptationResult(
        encoder_dir=out_dir,
        content_hash=encoder.content_hash,
        document_hash=encoder.document_hash,
        mntp_losses=mntp_losses,
        contrastive_losses=contrastive_losses,
        simcse_losses=simcse_losses,
        head_losses=head_losses,
        n_train_reports=len(reports),
        n_pairs=len(pairs),
        seconds=time.perf_counter() - start,
        mntp_eval_loss=mntp_eval,
        resumed_from=resumed_from,
        release_dir=Path(release_dir) if release_dir is not None else None,
        notes=notes,
        query_adapter=query_fit,
    )


def _check_release(folder: Path, params: TextEncoderParams) -> Path:
    """The release folder to start from, refused when it was trained for another setting."""
    from cxr_assets.text.encoder import ENCODER_CONFIG
    from cxr_assets.text.release import is_release

    if not is_release(folder):
        raise FileNotFoundError(
            f"text_encoder.init_from {str(folder)!r} is not a release folder "
            "(encoder_config.json with format 'release')")
    stored = json.loads((folder / ENCODER_CONFIG).read_text())
    if params.head_training.steps > 0 and params.pooling in ("latent_attention",
                                                              "mean_and_latent_attention"):
        # Stage three fits the head on the release's body (starting from its head, if any).
        stored = {**stored, "pooling": params.pooling}
    checks = [("base_model", "base_model", params.base_model),
              ("bidirectional", "bidirectional", params.bidirectional),
              ("pooling", "pooling", params.pooling)]
    if params.pooling == "mean_and_latent_attention" and params.head_training.steps == 0:
        # The release's head was trained against this share of the mean: keep it.
        checks.append(("mean_weight", "latent_attention.mean_weight",
                       params.latent_attention.mean_weight))
    for key, name, want in checks:
        if stored.get(key, True if key == "bidirectional" else None) != want:
            raise ValueError(
                f"text_encoder.init_from {str(folder)!r} was trained with {key}="
                f"{stored.get(key)!r}, but text_encoder.{name} is {want!r}")
    return folder


def _mean_taps_note(folder: Path, params: TextEncoderParams) -> list[str]:
    """A note when the mean is read from other layers than the release's (allowed: the weights do
    not depend on it, but the release's evaluation then no longer describes this encoder)."""
    from cxr_assets.text.encoder import ENCODER_CONFIG
    from cxr_assets.text.encoder_files import stored_mean_taps
    from cxr_assets.text.pooling import mean_taps_of

    released = stored_mean_taps(json.loads((folder / ENCODER_CONFIG).read_text()))
    ours = mean_taps_of(params.mean_pooling)
    if released == ours:
        return []
    return [(f"mean pooled at layers {list(ours.layers)} (skip first token: "
             f"{ours.skip_first_token}); release {folder.name} was evaluated with "
             f"{list(released.layers)} ({released.skip_first_token})")]


def _train_head(body: Any, tokenizer: Any, head: Any, pairs: list[tuple[str, str]],
                hard_negatives: list[str | None] | None, tasks: list[str] | None,
                params: TextEncoderParams, seed: int, progress: bool,
                log: Callable[[int, float], None] | None, postprocess: Any,
                ckpt: Checkpointer, body_state: dict, resume: dict | None) -> list[float]:
    """Stage three: token states of the pairs' texts once, then the head alone on them.

    Resumable: the token states are saved beside the checkpoint once computed, and the head's
    checkpoints carry `body_state` (stage two's final adapter), so a killed run starts again at
    its last head step without recomputing the states or retraining the body."""
    from cxr_assets.text.head_training import CachedTeacher, TokenStates, train_pooling_head

    hp = params.head_training
    pairs, hard_negatives, tasks = select_tasks(pairs, hard_negatives, tasks, hp.tasks,
                                                "head_training.tasks")
    texts = [t for pair in pairs for t in pair] + [n for n in hard_negatives or [] if n]
    states_file = None if ckpt.folder is None else ckpt.folder / TOKEN_STATES_FILE
    states = (TokenStates.load(states_file, ckpt.key)
              if states_file is not None and params.checkpoint.resume else None)
    if states is None:
        if ckpt.file is not None:  # a kill from here on skips stages one and two
            ckpt.save({**body_state, "stage": "head", "step": 0, "head": head.state_dict(),
                       "optimizer": None, "head_losses": []})
        states = TokenStates.compute(body, tokenizer, texts, params.max_length,
                                     params.embed_batch_size, progress)
        if states_file is not None:
            states.save(states_file, ckpt.key)
    teacher = None
    if hp.distill_weight > 0:
        from cxr_assets.text.baselines import MiniLMEncoder

        teacher = CachedTeacher(MiniLMEncoder(), texts)
    losses: list[float] = list(resume["head_losses"]) if resume else []
    start_step = resume["step"] if resume else 0

    def checkpoint(step: int, optimizer: Any) -> None:
        if ckpt.due(step, hp.steps):
            ckpt.save({**body_state, "stage": "head", "step": step + 1,
                       "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                       "head_losses": losses})

    train_pooling_head(head, states, pairs, hp.as_contrastive(), seed + 3, hard_negatives,
                       tasks, teacher, progress, _collect(log, losses), pooling=params.pooling,
                       mean_weight=params.latent_attention.mean_weight,
                       postprocess=postprocess, start_step=start_step,
                       optimizer_state=resume["optimizer"] if resume else None,
                       on_step=checkpoint)
    return losses


def _gradient_checkpointing(peft_model: Any, enabled: bool) -> None:
    """Recompute activations in backward (less memory for long reports / big batches)."""
    if enabled:
        peft_model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model.enable_input_require_grads()
    else:  # a no-op when it was never enabled; transformers 5 renamed it
        getattr(peft_model, "activation_checkpointing_disable",
                peft_model.gradient_checkpointing_disable)()


def _collect(log: Callable[[int, float], None] | None, sink: list[float]) -> Callable[[int, float], None]:
    def record(step: int, loss: float) -> None:
        sink.append(loss)
        if log is not None:
            log(step, loss)
    return record


def select_tasks(pairs: list[tuple[str, str]], hard_negatives: list[str | None] | None,
                 tasks: list[str] | None, wanted: list[str] | None, key: str
                 ) -> tuple[list[tuple[str, str]], list[str | None] | None, list[str] | None]:
    """The pairs (with their hard negatives and tasks) whose task is in `wanted` (None: all)."""
    if wanted is None:
        return pairs, hard_negatives, tasks
    if tasks is None:
        raise ValueError(f"{key} {wanted}: the training pairs carry no task names (they come "
                         "from report_variants or the IU corpus; the findings/impression fallback "
                         "has none): set it to null")
    keep = [i for i in range(len(pairs)) if tasks[i] in wanted]
    if len(keep) < 2:
        present = sorted(set(tasks))
        raise ValueError(f"{key} {wanted} leave {len(keep)} pairs (need >= 2); "
                         f"the training data's tasks are {present}")
    return ([pairs[i] for i in keep],
            None if hard_negatives is None else [hard_negatives[i] for i in keep],
            [tasks[i] for i in keep])
