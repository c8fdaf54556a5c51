"""text_encoder: adapt a base LLM (or a released adapted encoder) into a report encoder.

The recipe (cxr_assets/text/adapt.py): attention bidirectional or causal, LoRA masked next-token
prediction on the training split's reports (merged), then symmetric contrastive training on report
variants (abbreviated -> report, findings -> impression, style rewrites, with hard negatives;
single-task batches; optional teacher distillation) or, without the variants table, on
(findings, impression) pairs; merged; post-processing fitted on training reports; saved as one
folder (safetensors, tokenizer, pooling head, post-processing, encoder config with a content
hash). `text_encoder.init_from` starts from a release folder, `release_to` writes one.

`text_encoder.corpus.source: iu_csv` adapts on the IU reports instead (their training part of a
uid-level split, held-out texts removed). Afterwards the adapted encoder and the baselines, each
with and without post-processing, are evaluated on the held-out IU reports with paired bootstrap
intervals (`reports/text_encoder_eval.json` + `.md`, with the release's stored tables appended),
and both adaptation stages, the evaluation and the artifact are logged to MLflow.

Rooms: the training data in text/corpus.py, the recipe in text/adapt.py, the held-out evaluation
in text/heldout.py, the MLflow run in registry/run_logging.py.
"""

from __future__ import annotations

import logging
from typing import Any

from cxr_assets.config import Params, params_file
from cxr_assets.paths import ProjectPaths
from cxr_assets.stages.base import Markdown, StageResult, require

log = logging.getLogger(__name__)


def run(params: Params, paths: ProjectPaths, progress: bool = True) -> StageResult:
    from cxr_assets.text.adapt import adapt_text_encoder
    from cxr_assets.text.corpus import training_data
    from cxr_assets.text.heldout import evaluate_heldout, release_markdown, write_evaluation

    te = params.text_encoder
    if te.init_from:  # relative to the project root, wherever the process runs
        te = te.model_copy(update={"init_from": str(paths.at(te.init_from))})
    if te.corpus.source == "catalog":
        require("text_encoder", {"report_texts": [paths.report_texts_table],
                                 "study_splits": [paths.splits_table]})
    data = training_data(params, paths, progress)
    if not data.texts:
        raise ValueError("text_encoder: the training split has no report text to adapt on")
    result = adapt_text_encoder(
        data.texts, data.pairs, te, paths.base_model_cache, paths.text_encoder_dir,
        seed=params.project.seed, progress=progress,
        hard_negatives=data.hard_negatives, tasks=data.tasks,
        checkpoint_dir=paths.artifacts_dir / "text_encoder_checkpoints",
        release_dir=paths.at(te.release_to) if te.release_to else None,
    )

    reused = _cache_fit_embeddings(result, paths, te.instruction)
    table, notes = None, ["evaluation disabled (text_encoder.evaluation.enabled: false)"]
    differences = None
    if te.evaluation.enabled:
        table, notes, differences = evaluate_heldout(params, paths, result.encoder_dir,
                                                       progress, data)
        if table is None:
            log.warning("; ".join(notes))
    notes = notes + result.notes
    eval_files = write_evaluation(table, notes, paths.reports_dir, differences,
                                  release_markdown(params.text_encoder.init_from, paths))
    if result.release_dir is not None:
        import shutil

        from cxr_assets.text.release import write_model_card

        shutil.copyfile(eval_files[0], result.release_dir / "evaluation.json")
        write_model_card(result.release_dir, params, result, data.source,
                         eval_files[1].read_text(),
                         f"CXR_PARAMS={params_file().name} cxr stage text_encoder")
    run_id = None
    if te.mlflow:
        from cxr_assets.registry.text_logging import log_text_encoder

        run_id = log_text_encoder(params, paths, result, data, table, eval_files)

    def first_last(values: list[float]) -> str:
        return f"{values[0]:.3f} -> {values[-1]:.3f}" if values else "skipped"

    metadata: dict[str, Any] = {
        "base_model": te.base_model,
        "encoder_hash": result.content_hash,
        "training_source": data.source,
        "n_train_reports": result.n_train_reports,
        "n_pairs": result.n_pairs,
        "n_hard_negatives": sum(1 for h in (data.hard_negatives or []) if h),
        "mntp_loss": first_last(result.mntp_losses),
        "mntp_fixed_batch_loss": ("skipped" if result.mntp_eval_loss is None else
                                  f"{result.mntp_eval_loss[0]:.3f} -> {result.mntp_eval_loss[1]:.3f}"),
        "contrastive_loss": first_last(result.contrastive_losses),
        "head_loss": first_last(result.head_losses),
        "query_adapter": _query_adapter_summary(result.query_adapter, te.query_adapter.steps),
        "report_embeddings_cached": reused,
        "resumed_from": result.resumed_from or "fresh start",
        "init_from": te.init_from or "base model",
        "bidirectional": te.bidirectional,
        "postprocess": te.postprocess.method,
        "lora_r": te.lora.r,
        "pooling": te.pooling,
        "mean_layers": (f"{te.mean_pooling.layers}"
                        + (", first token left out" if te.mean_pooling.skip_first_token else "")),
        "seconds": round(result.seconds, 1),
        "mlflow_run_id": run_id or "disabled",
    }
    metadata["evaluation"] = Markdown(eval_files[1].read_text())
    metadata["evaluation_file"] = eval_files[0]
    return StageResult("text_encoder", {"text_encoder": result.encoder_dir}, metadata)


def _cache_fit_embeddings(result: Any, paths: ProjectPaths, instruction: str) -> int:
    """The training reports the query adapter was fitted against were encoded by the final
    encoder: put them in the report-embedding cache, where report_embeddings finds them.
    Returns how many were added (none when report_embeddings encodes with an instruction: the
    adapter's reports were encoded without one)."""
    fit = result.query_adapter
    if fit is None or fit.report_vectors is None or instruction:
        return 0
    from cxr_assets.embed.text_cache import add_encoded

    return add_encoded(paths.embedding_cache_dir, result.document_hash, fit.reports,
                       fit.report_vectors, instruction=None)


def _query_adapter_summary(fit: Any, steps: int) -> str:
    from cxr_assets.text.query_adapter import MIN_REPORTS

    if fit is None:
        return ("none (text_encoder.query_adapter.steps: 0)" if steps == 0 else
                f"none (fewer than {MIN_REPORTS} distinct training reports)")
    return (f"rank {fit.adapter.rank}, {fit.n_pairs} queries of {fit.n_reports} reports; "
            f"held-aside queries with a right report in their top 10: "
            f"{fit.heldout_hit_at_10_before:.3f} -> {fit.heldout_hit_at_10_after:.3f}; "
            f"loss {fit.losses[0]:.3f} -> {fit.losses[-1]:.3f}")
