"""The registered model: an MLflow pyfunc that embeds chest X-ray images and report texts.

Input: a pandas DataFrame with an `image_path` column (DICOM, PNG or JPG) and/or a
`report_text` column. Output: a DataFrame with `image_embedding` / `text_embedding` columns
(L2-normalized lists in the shared CLIP space; None where the input was missing).
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

TEXT_ENCODER = "text_encoder"
CLIP_MODEL = "clip_model"


def load_image_for_model(path: str | Path, size: int):
    """A DICOM or raster image -> the normalized [1, size, size] tensor the image tower expects.

    Raster files (such as the image cache's PNGs) take the training loader's path; DICOM files
    are decoded like the image cache does (polarity, LUTs), then quantized to 8 bits as cached.
    """
    import torch

    from cxr_assets.vision.transforms import load_cached_image, normalize_pixels

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image_path does not exist: {path}")
    if path.suffix.lower() != ".dcm":
        return load_cached_image(path, size)
    from cxr_assets.ingest.dicom import decode_pixels
    from cxr_assets.ingest.image_cache import resize_and_pad

    pixels = np.round(resize_and_pad(decode_pixels(path), size) * 255.0) / 255.0
    return normalize_pixels(torch.from_numpy(pixels.astype(np.float32))[None])


class CxrClipPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from cxr_assets.clip.model import load_clip_model
        from cxr_assets.text.encoder import TextEncoder

        self.text_encoder = TextEncoder.from_pretrained(Path(context.artifacts[TEXT_ENCODER]))
        self.clip = load_clip_model(Path(context.artifacts[CLIP_MODEL]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        import torch

        frame = pd.DataFrame(model_input)
        out = pd.DataFrame(index=frame.index)
        if "image_path" in frame:
            paths = [p for p in frame["image_path"] if isinstance(p, (str, Path)) and p]
            size = self.clip.config.image_size
            vectors = {}
            if paths:
                batch = torch.stack([load_image_for_model(p, size) for p in paths])
                with torch.inference_mode():
                    emb = self.clip.encode_image(batch).numpy()
                vectors = {str(p): v for p, v in zip(paths, emb)}
            out["image_embedding"] = [
                vectors[str(p)].tolist() if str(p) in vectors else None for p in frame["image_path"]
            ]
        if "report_text" in frame:
            texts = [t if isinstance(t, str) else "" for t in frame["report_text"]]
            if self.clip.text_tower is not None:
                # LoRA-trained text tower: the model's own (merged) encoder, not the cached one.
                with torch.inference_mode():
                    emb = self.clip.encode_reports(texts).numpy()
            else:
                raw = self.text_encoder.encode(
                    texts, instruction=self.text_encoder.instruction or None, progress=False)
                with torch.inference_mode():
                    emb = self.clip.encode_text(torch.from_numpy(raw)).numpy()
            out["text_embedding"] = [
                v.tolist() if isinstance(t, str) and t else None
                for t, v in zip(frame["report_text"], emb)
            ]
        if out.shape[1] == 0:
            raise ValueError("model input needs an 'image_path' and/or a 'report_text' column")
        return out


PIP_REQUIREMENTS = [
    "torch==2.14.1", "torchvision==0.29.1", "transformers==5.24.0", "timm==1.0.31",
    "pydicom==3.0.2", "pillow", "pandas<3", "safetensors", "mlflow==3.17.2",
]


def log_clip_pyfunc(text_encoder_dir: Path, clip_model_dir: Path, model_name: str | None):
    """Log the pyfunc into the active run; register it under `model_name` when given."""
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=CxrClipPyfunc(),
        artifacts={TEXT_ENCODER: str(text_encoder_dir), CLIP_MODEL: str(clip_model_dir)},
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=model_name,
    )


def load_champion(client, model_name: str):
    """(the model version holding the `champion` alias, its pyfunc loaded through MLflow: the
    same model users load); LookupError when no version holds the alias."""
    from cxr_assets.registry.tracking import CHAMPION, model_uri, version_by_alias

    champion = version_by_alias(client, model_name, CHAMPION)
    if champion is None:
        raise LookupError(f"no version of model {model_name!r} has the alias '{CHAMPION}': "
                          "run the main job first")
    return champion, mlflow.pyfunc.load_model(model_uri(model_name, CHAMPION))


def embed_pairs(model, image_paths: list[str], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """float32 (image embeddings, text embeddings) of paired rows, through a loaded pyfunc."""
    predicted = model.predict(pd.DataFrame({"image_path": image_paths, "report_text": texts}))
    return (np.asarray(predicted["image_embedding"].tolist(), dtype=np.float32),
            np.asarray(predicted["text_embedding"].tolist(), dtype=np.float32))


def text_embedder(model):
    """texts -> float32 text embeddings through a loaded pyfunc (zero-shot prompts)."""

    def embed(texts: list[str]) -> np.ndarray:
        embedded = model.predict(pd.DataFrame({"report_text": texts}))
        return np.asarray(embedded["text_embedding"].tolist(), dtype=np.float32)

    return embed
