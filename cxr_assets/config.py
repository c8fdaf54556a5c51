"""Typed view of params.yaml.

params.yaml is the single home of hyper-parameters and paths; DVC reads it for stage
invalidation and every stage receives the validated `Params` object built here. A bad value
fails early with the dotted key, the offending value and what is allowed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PARAMS_ENV = "CXR_PARAMS"
DEFAULT_PARAMS_FILE = "params.yaml"


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or holds an invalid value."""


class _Section(BaseModel):
    # Unknown keys are typos until proven otherwise: refuse them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectParams(_Section):
    name: str = "cxr-clip"
    seed: int = 1234


class PathParams(_Section):
    """Locations, relative to the project root unless absolute."""

    raw_dir: str = "data/raw/demo"
    catalog_dir: str = "data/catalog"
    image_cache_dir: str = "data/image_cache"
    artifacts_dir: str = "artifacts"
    reports_dir: str = "reports"
    cache_dir: str = ".cache/cxr"


class DemoDataParams(_Section):
    out_dir: str = Field("data/raw/demo", description="where the generator writes its studies")
    n_studies: int = Field(300, ge=4, le=100_000)
    seed: int = 7
    image_size: int = Field(256, ge=64, le=4096, description="phantom side length in pixels")
    n_institutions: int = Field(3, ge=1, le=10)
    views_per_study_max: int = Field(2, ge=1, le=3)
    workers: int = Field(2, ge=1, le=64, description="generator processes (the output does not depend on them)")


class ManifestColumns(_Section):
    """Column names of a generic CSV manifest (layout csv_manifest)."""

    image_path: str = Field("image_path", description="image file path, relative to ingest.images_root")
    report_text: str = Field("report", description="free-text report")
    study_id: str | None = Field(None, description="null: one study per row")
    patient_id: str | None = Field(None, description="null: the study id stands for the patient")
    view: str | None = Field(None, description="view position (PA, AP, LATERAL, ...), optional")


class IngestParams(_Section):
    layout: Literal[
        "auto", "mimic_cxr", "iu_xray", "openi_xml", "chexpert", "padchest", "csv_manifest",
        "dicom_tree",
    ] = Field("auto", description="dataset layout of paths.raw_dir; auto detects and says what it found")
    source_name: str = Field("demo", description="label stored with every study (its data source)")
    images_root: str | None = Field(
        None, description="folder the image paths of CSV/XML layouts are relative to (null: raw_dir)")
    metadata_csv: str | None = Field(
        None, description="the layout's main CSV when not at its usual name inside raw_dir")
    reports_csv: str | None = Field(
        None, description="separate report CSV: CheXpert Plus reports, or DICOM-tree sidecar reports")
    columns: ManifestColumns = ManifestColumns()
    require_images: bool = Field(
        True, description="false: keep a study whose image files are all missing, for its report")
    max_studies: int | None = Field(
        None, ge=1, description="catalogue only the first N studies (in the layout's order) of a large source")
    phi_policy: Literal["auto", "refuse", "strip", "allow"] = Field(
        "auto", description="identifying data found: refuse = quarantine, strip = mask/drop, allow; "
        "auto = allow for known de-identified public layouts, refuse otherwise")
    phi_salt: str = Field("cxr-phi-v1", description="salt of the patient pseudonyms of DICOM trees")
    drop_dir: str | None = Field(
        "data/incoming", description="watched folder: each sub-folder is a new batch in the same layout")
    image_size: int = Field(224, ge=32, le=2048, description="cached image side (resize + pad)")
    cache_bits: Literal[8, 16] = 8
    workers: int = Field(2, ge=1, le=64)
    decode_shards: int = Field(
        1, ge=1, description="study_images split into this many shards (by image cache key), run "
        "in parallel as Dagster steps or `cxr stage study_images --shard I/N`, then merged into "
        "the same table; 1 = one process")


class QualityParams(_Section):
    min_report_chars: int = Field(10, ge=0)
    max_report_chars: int = Field(4000, ge=100)
    impression_only_share: tuple[float, float] = (0.02, 0.8)
    min_studies: int = Field(4, ge=1)
    reference_profile: str | None = Field(
        "data_contracts/reference/report_profile.json",
        description="stored profile summary the reports_drift check compares against (null: off)",
    )
    drift_tolerance: float = Field(0.15, ge=0, le=1, description="allowed |share - reference|")
    max_identical_test_share: float = Field(
        0.5, ge=0, le=1,
        description="warn when more test reports than this share have a word-identical train report",
    )

    @field_validator("impression_only_share")
    @classmethod
    def _band_ordered(cls, band: tuple[float, float]) -> tuple[float, float]:
        lo, hi = band
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError("must be [low, high] with 0 <= low <= high <= 1")
        return band


class SplitParams(_Section):
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)
    salt: str = "cxr-split-v1"
    stratify: bool = Field(True, description="balance each (source, label) stratum across splits")
    official_split_file: str | None = Field(
        None, description="MIMIC-CXR split CSV or R2Gen IU annotation JSON; its splits win"
    )

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:.4f}")
        return self


class ReportsParams(_Section):
    """Report variants the text encoder trains on (stage report_variants)."""

    variant_seed: int = 17
    variant_kinds: list[
        Literal["abbreviated", "expanded", "impression_only", "sentence_shuffled",
                "style_rewrite", "findings_to_impression"]
    ] = ["abbreviated", "expanded", "impression_only", "sentence_shuffled", "style_rewrite",
         "findings_to_impression"]
    abbreviation_rate: float = Field(0.8, ge=0, le=1, description="share of long forms contracted")


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraParams(_Section):
    # llm2vec's recipe: r16 on every linear layer of the decoder.
    r: int = Field(16, ge=1, le=512)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ALL_LINEAR
    top_layers: int | None = Field(
        None, ge=1, description="LoRA only on the last N decoder layers (null: all); the frozen "
        "lower layers need no backward pass, so a step costs less on a CPU")


class MntpParams(_Section):
    steps: int = Field(20, ge=0)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-4, gt=0)
    mask_probability: float = Field(0.2, gt=0, lt=1)
    warmup_steps: int = Field(0, ge=0, description="linear warm-up, then cosine decay to 0")
    merge: bool = Field(True, description="merge the MNTP LoRA before a fresh contrastive LoRA "
                        "(llm2vec); false: the contrastive stage keeps training the same LoRA")
    eval_batch_size: int = Field(16, ge=0, description="held-aside reports whose MNTP loss, with "
                                 "a fixed mask, is reported before and after (0: off)")


class ContrastiveParams(_Section):
    steps: int = Field(20, ge=0)
    batch_size: int = Field(8, ge=2)
    lr: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(0, ge=0, description="linear warm-up, then cosine decay to 0")
    loss_scale: float = Field(20.0, gt=0, description="1 / temperature")
    symmetric: bool = Field(True, description="InfoNCE in both directions (query->candidates and "
                            "positive->queries); false: query->candidates only")
    hard_negatives: bool = Field(True, description="use report_variants hard negatives when present")
    finding_statements: bool = Field(False, description="add (report, finding statement) pairs "
                                     "with opposite-polarity hard negatives (text.statements)")
    statement_scoring: Literal["pair_only", "label_aware"] = Field(
        "pair_only", description="finding statements against their own hard negative only "
        "(pair_only), or also against the batch's other reports where the labeler rules them out "
        "(label_aware)")
    statement_phrasing: Literal["observation", "report_words", "both"] = Field(
        "observation", description="finding statements name the CheXpert observation ('Lung "
        "lesion.'), use the report's own words with their modifiers ('Right upper lobe nodule.'), "
        "or both (a pair each)")
    normal_statements: bool = Field(False, description="also state 'No acute cardiopulmonary "
                                    "abnormality.' for the reports the labeler finds normal, so "
                                    "short normal reports meet finding queries in training")
    simcse_steps: int = Field(0, ge=0, description="optional unsupervised SimCSE steps (dropout views)")
    gradient_checkpointing: bool = False
    distill_weight: float = Field(0.0, ge=0, description="weight of the KL divergence between the "
                                  "teacher's and the student's in-batch similarity distributions")
    distill_teacher: Literal["minilm"] = Field("minilm", description="sentence-encoder teacher")
    tasks: list[str] | None = Field(None, description="pair tasks stage two trains on (e.g. "
                                    "[finding_statement] for a round on finding queries); "
                                    "null: every task")


class HeadTrainingParams(_Section):
    """Stage three: the latent-attention head alone, on token states cached after the merge
    (text/head_training.py); the pairs are stage two's."""

    steps: int = Field(0, ge=0, description="0: the head trains only with the LoRA (stage two)")
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(100, ge=0, description="linear warm-up, then cosine decay to 0")
    loss_scale: float = Field(20.0, gt=0, description="1 / temperature")
    symmetric: bool = True
    statement_scoring: Literal["pair_only", "label_aware"] = "label_aware"
    distill_weight: float = Field(1.0, ge=0, description="KL to the teacher's in-batch "
                                  "similarity distribution (the teacher's vectors are cached too)")
    distill_teacher: Literal["minilm"] = "minilm"
    tasks: list[str] | None = Field(None, description="pair tasks the head trains on (their texts "
                                    "are run through the LLM once); null: every task of stage two")

    def as_contrastive(self) -> ContrastiveParams:
        """The same loop as stage two runs (contrastive_steps), with these settings."""
        return ContrastiveParams(**self.model_dump(exclude={"tasks"}), hard_negatives=True,
                                 finding_statements=True)


class PostprocessParams(_Section):
    method: Literal["center_scale", "center", "none"] = Field(
        "center_scale", description="fitted on training reports, applied by TextEncoder.encode")
    n_fit: int = Field(512, ge=2, description="training reports the statistics are fitted on")


class QueryAdapterParams(_Section):
    """The query adapter (cxr_assets/text/query_adapter.py), fitted on the stage's training reports."""

    steps: int = Field(0, ge=0, description="0: no adapter (queries are embedded like reports)")
    n_fit: int = Field(600, ge=10, description="training reports whose clauses and findings are the queries")
    per_report: int = Field(2, ge=1, description="clauses and finding statements taken per report")
    rank: int = Field(64, ge=1, le=4096)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-3, ge=0)
    loss_scale: float = Field(20.0, gt=0)


class TextCheckpointParams(_Section):
    every_n_steps: int = Field(25, ge=0, description="0 = no checkpoints")
    resume: bool = Field(True, description="continue an unfinished run of the same params and data")


class LatentAttentionParams(_Section):
    num_latents: int = Field(64, ge=1, le=8192, description="LLM2Vec4CXR uses 512")
    num_heads: int = Field(8, ge=1, le=128, description="must divide the LLM's hidden size")
    mean_weight: float = Field(0.5, gt=0, lt=1, description="pooling mean_and_latent_attention: "
                               "share of the (post-processed) mean in the cosine; the head's "
                               "output has the rest")


class MeanPoolingParams(_Section):
    layers: list[int] = Field([-1], min_length=1, description="hidden-state indices the mean part "
                              "reads, side by side (0: token embeddings, -1: the final output)")
    skip_first_token: bool = Field(False, description="leave each text's first token (a causal "
                                   "LLM's attention sink) out of the mean")

    @field_validator("layers")
    @classmethod
    def _distinct(cls, layers: list[int]) -> list[int]:
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers repeat: {layers}")
        return layers


class TextCorpusParams(_Section):
    source: Literal["catalog", "iu_csv"] = Field(
        "catalog",
        description="'catalog': the pipeline's training-split reports; 'iu_csv': the IU reports "
        "CSV at iu_csv (its training part of a uid-level split)",
    )
    iu_csv: str = "../shared/data/iu_xray/indiana_reports.csv"
    heldout_fraction: float = Field(
        0.3, gt=0, lt=1, description="uid-level share of IU reports never trained on (evaluation)"
    )
    validation_fraction: float = Field(
        0.0, ge=0, lt=1, description="uid-level share of the IU training part also kept out of "
        "training, to choose among variants there (benchmarks/ablate_head_statements.py); 0: none")
    salt: str = "cxr-text-eval-v1"


class TextEvalParams(_Section):
    enabled: bool = True
    iu_csv: str = "../shared/data/iu_xray/indiana_reports.csv"
    max_reports: int = Field(300, ge=10, description="held-out IU reports evaluated (cap)")
    baselines: list[Literal["raw_llm", "raw_llm_bidirectional", "raw_llm_tapped", "minilm",
                            "minilm_finetuned", "tfidf"]] = ["raw_llm", "raw_llm_bidirectional",
                                                             "minilm", "tfidf"]
    postprocess_baselines: bool = Field(True, description="also score each baseline with the "
                                        "same post-processing, fitted on training reports")
    bootstrap_samples: int = Field(1000, ge=0, description="paired bootstrap of adapted - baseline")
    seed: int = 0


class TextEncoderParams(_Section):
    base_model: str = Field(
        "smollm2-gguf",
        description="'smollm2-gguf' (embedded wheel), a local folder, a .gguf file or a HF id",
    )
    dtype: Literal["float32", "bfloat16"] = "float32"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    max_length: int = Field(128, ge=8, le=8192)
    pooling: Literal["mean", "weighted_mean", "last_token", "latent_attention",
                     "mean_and_latent_attention"] = Field(
        "mean", description="mean_and_latent_attention: the body trained mean-pooled, then a head "
        "trained on top of it (head_training); both parts side by side")
    latent_attention: LatentAttentionParams = LatentAttentionParams()
    mean_pooling: MeanPoolingParams = Field(MeanPoolingParams(), description="where the mean part "
                                            "of pooling mean / mean_and_latent_attention is read")
    instruction: str = Field("", description="stored default instruction; training and the "
                             "evaluation use plain text on both sides of every pair")
    bidirectional: bool = Field(True, description="LLM2Vec step 1; false keeps causal attention")
    init_from: str | None = Field(None, description="a released adapted encoder folder to start "
                                  "from (null: the base model)")
    release_to: str | None = Field(None, description="also write a release folder here (LoRA "
                                   "adapters, pooling head, post-processing: small enough for git)")
    embed_batch_size: int = Field(16, ge=1)
    encode_path: Literal["auto", "fp32", "openvino_fp32", "openvino_bf16", "int8_smooth",
                         "bf16_linear", "bf16", "bf16_compiled", "bf16_autocast", "int8_dynamic",
                         "openvino_int8", "cuda_bf16"] = Field(
        "auto", description="how report_embeddings runs the encoder: 'auto' probes the paths this "
        "CPU/GPU supports against fp32 and keeps the fastest within the fidelity bar (see "
        "cxr_assets/text/encode_paths.py); a path name forces it")
    embed_shards: int = Field(
        1, ge=1, description="report_embeddings split into this many shards (by text hash), run "
        "in parallel as Dagster steps or `cxr stage report_embeddings --shard I/N`, then merged "
        "into the same table; 1 = one process")
    postprocess: PostprocessParams = PostprocessParams()
    query_adapter: QueryAdapterParams = QueryAdapterParams()
    checkpoint: TextCheckpointParams = TextCheckpointParams()
    lora: LoraParams = LoraParams()
    mntp: MntpParams = MntpParams()
    contrastive: ContrastiveParams = ContrastiveParams()
    head_training: HeadTrainingParams = HeadTrainingParams()
    corpus: TextCorpusParams = TextCorpusParams()
    evaluation: TextEvalParams = TextEvalParams()
    mlflow: bool = Field(True, description="log both adaptation stages and the evaluation to MLflow")

    @model_validator(mode="after")
    def _head_needs_a_head(self) -> TextEncoderParams:
        heads = ("latent_attention", "mean_and_latent_attention")
        if self.head_training.steps > 0 and self.pooling not in heads:
            raise ValueError(
                f"head_training.steps is {self.head_training.steps} but pooling is "
                f"{self.pooling!r}: only poolings {heads} have a head to train")
        if self.pooling == "mean_and_latent_attention" and self.head_training.steps == 0 \
                and not self.init_from:
            raise ValueError("pooling 'mean_and_latent_attention' trains its head in stage three: "
                             "set head_training.steps > 0 (or init_from a release that has one)")
        if self.mean_pooling != MeanPoolingParams() and self.pooling not in (
                "mean", "mean_and_latent_attention"):
            raise ValueError(f"mean_pooling is set but pooling {self.pooling!r} has no mean part")
        if self.mean_pooling.layers != [-1] and self.head_training.steps > 0:
            # Stage three caches the last layer's token states only.
            raise ValueError(f"head_training.steps > 0 needs mean_pooling.layers [-1], got "
                             f"{self.mean_pooling.layers}: train the head first, then choose "
                             "the layers")
        return self


class ClipCheckpointParams(_Section):
    """Resumable training state (model, optimizer, scheduler, RNG, data position)."""

    every_n_steps: int = Field(0, ge=0, description="0 = only at the end of training")
    resume: bool = Field(True, description="continue from <artifacts>/clip_checkpoints/last")
    dir: str | None = Field(None, description="checkpoint folder; default artifacts/clip_checkpoints")


class ClipDistributedParams(_Section):
    """torchrun settings; nproc_per_node > 1 makes the clip_model stage launch torchrun."""

    nproc_per_node: int = Field(1, ge=1, le=64)
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl on GPU")


class ClipTextLoraParams(_Section):
    """LoRA on the report encoder's attention when clip.text_tower is `lora` (LLM2CLIP4CXR)."""

    r: int = Field(8, ge=1, le=512)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class ClipParams(_Section):
    vision_backbone: str = "resnet18"
    vision_pretrained_path: str | None = None
    image_size: int = Field(128, ge=32, le=1024)
    embed_dim: int = Field(256, ge=8, le=4096)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(5, ge=0)
    init_logit_scale: float = Field(2.6592, description="ln(1/0.07)")
    max_logit_scale: float = Field(4.6052, description="ln(100)")
    threads: int = Field(2, ge=1, le=256)
    loss: Literal["infonce", "siglip", "reference"] = Field(
        "infonce",
        description="infonce: symmetric CLIP loss; siglip: sigmoid loss with learnable bias; "
        "reference: LLM2CLIP4CXR code's raw logit_scale multiplier on unnormalized features",
    )
    micro_batch_size: int | None = Field(
        None, ge=1, description="GradCache chunk; None = whole batch at once (batch_size = effective)"
    )
    select_best: Literal["val_loss", "val_recall", "last"] = Field(
        "val_loss",
        description="which epoch's weights are kept: lowest validation loss, highest validation "
        "mean recall (R@1/5/10 both ways; ties go to the later epoch), or the last epoch",
    )
    positives: Literal["paired", "same_text", "same_labels"] = Field(
        "paired",
        description="in-batch positives of the contrastive loss: paired (only the own report), "
        "same_text (also identical report text, e.g. other views of the study), same_labels "
        "(also reports with the same labeler findings; multi-positive targets per row)",
    )
    text_adapter: Literal["linear", "mlp"] = Field("linear", description="LN+Linear or residual MLP")
    adapter_blocks: int = Field(2, ge=1, le=16, description="residual blocks for text_adapter=mlp")
    in_chans: Literal[1, 3] = Field(1, description="3 = grayscale replicated to RGB stems")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="fp16 needs a GPU")
    grad_clip_norm: float = Field(1.0, ge=0, description="0 disables clipping")
    layer_decay: float = Field(1.0, gt=0, le=1, description="layer-wise lr decay (1 = off)")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="EMA of weights (0 = off)")
    workers: int = Field(0, ge=0, le=64, description="data loader processes (spawn)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    text_tower: Literal["cached", "lora"] = Field(
        "cached",
        description="cached: frozen encoder, precomputed embeddings + adapter; lora: the encoder "
        "runs online with LoRA on its attention (slower; allows text augmentation)",
    )
    text_lora: ClipTextLoraParams = ClipTextLoraParams()
    text_augment_p: float = Field(
        0.3, ge=0, le=1, description="sentence shuffle within sections (text_tower=lora only)"
    )
    checkpoint: ClipCheckpointParams = ClipCheckpointParams()
    distributed: ClipDistributedParams = ClipDistributedParams()

    @model_validator(mode="after")
    def _micro_fits(self) -> ClipParams:
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise ValueError(
                f"micro_batch_size {self.micro_batch_size} > batch_size {self.batch_size}"
            )
        return self


class ComparisonParams(_Section):
    """model_comparison: text towers trained with the same CLIP budget, in-domain and cross-site."""

    text_towers: list[Literal["adapted", "minilm", "minilm_finetuned", "raw_llm", "tfidf"]] = Field(
        ["adapted", "minilm", "raw_llm"], min_length=1,
        description="towers compared; adapted in-domain is this run's clip_model itself")
    epochs: int | None = Field(None, ge=1, description="CLIP epochs per tower; None = clip.epochs")
    cross_site: bool = Field(True, description="also train without a site and evaluate on it")
    site_column: str = Field("source", description="site of a study: a studies-table column, "
                             "or a column of sites_csv")
    sites_csv: str | None = Field(None, description="CSV with study_id and site_column")
    sites_csv_study_prefix: str = Field("", description="prepended to the CSV's study ids")
    holdout_sites: list[str] = Field([], description="sites held out in turn; [] = every site")
    workers: int = Field(1, ge=1, le=32, description=(
        "baseline CLIPs trained side by side in processes, each with clip.threads / workers "
        "threads (small CPU models use 2 cores better as 2 one-thread trainings)"))


class EvaluationParams(_Section):
    recall_at: list[int] = [1, 5, 10, 50]
    primary_metric: str = "mean_recall"
    drift_tolerance: float = Field(0.05, ge=0, description="re-evaluation warns beyond this drop")
    n_worst_examples: int = Field(5, ge=0)
    subset_findings: list[str] = Field(
        ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"],
        description="findings of the 5x200-style subset (labeler observation names)")
    subset_per_finding: int = Field(200, ge=1, description="studies per finding in the subset")
    bootstrap_samples: int = Field(1000, ge=0, description="bootstrap resamples for 95% CIs (0 = off)")
    abbreviation_heavy_density: float = Field(
        0.05, ge=0, le=1, description="abbreviation density from which a report counts as abbreviation-heavy")
    min_group_size: int = Field(2, ge=1, description="style groups smaller than this are not reported")
    zero_shot: bool = Field(True, description="zero-shot AUC per observation (needs the labeler)")
    search_hnsw_min_rows: int = Field(
        10_000, ge=1, description="the embedding table gets an HNSW index from this many rows")
    comparison: ComparisonParams = ComparisonParams()


class RegistryParams(_Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_location: str = "mlartifacts"
    experiment: str = "cxr-clip"
    model_name: str = "cxr-clip"
    promotion_margin: float = Field(0.0, ge=0, description="challenger must beat champion by this")
    robustness_tolerance: float = Field(
        0.05, ge=0, description="largest drop allowed on any robustness metric when promoting")
    robustness_metrics: list[str] = Field(
        ["style/impression_only/mean_recall", "style/full_report/mean_recall",
         "style/abbreviation_heavy/mean_recall", "style/abbreviation_light/mean_recall"],
        description="metrics.json keys that must not regress beyond robustness_tolerance")


class Params(_Section):
    project: ProjectParams = ProjectParams()
    paths: PathParams = PathParams()
    demo_data: DemoDataParams = DemoDataParams()
    ingest: IngestParams = IngestParams()
    quality: QualityParams = QualityParams()
    splits: SplitParams = SplitParams()
    reports: ReportsParams = ReportsParams()
    text_encoder: TextEncoderParams = TextEncoderParams()
    clip: ClipParams = ClipParams()
    evaluation: EvaluationParams = EvaluationParams()
    registry: RegistryParams = RegistryParams()


def _section_fields(loc: tuple) -> list[str]:
    """Field names allowed at the parent of `loc`, for 'unknown key' errors."""
    model: type[BaseModel] = Params
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid parameters in {source}:"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = f"unknown key (allowed: {', '.join(_section_fields(item['loc']))})"
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f" got {value!r};"
        lines.append(f"  {key}:{shown} {message}")
    return "\n".join(lines)


def parse_params(raw: dict, source: str = "<dict>") -> Params:
    """Validate a params mapping; raise ParamsError naming each bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as error:
        raise ParamsError(_describe(error, source)) from None


def params_file(path: str | os.PathLike | None = None) -> Path:
    """The params file in use: explicit path, $CXR_PARAMS, or ./params.yaml."""
    return Path(path or os.environ.get(PARAMS_ENV) or DEFAULT_PARAMS_FILE).resolve()


def load_params(path: str | os.PathLike | None = None) -> Params:
    """Read and validate params.yaml (or $CXR_PARAMS)."""
    file = params_file(path)
    if not file.is_file():
        raise ParamsError(f"params file not found: {file} (set {PARAMS_ENV} or run from the repo root)")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise ParamsError(f"params file {file} is not valid YAML: {error}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"params file {file} must hold a mapping at the top level")
    return parse_params(raw, str(file))
