"""The registered model: an MLflow pyfunc that embeds chest X-ray images and report texts.

Input: a pandas DataFrame with any of the columns
  - `image_path`: a DICOM, PNG or JPG file readable where the model runs;
  - `image_base64`: the same kinds of file sent as base64 bytes (what an HTTP client sends to
    `mlflow models serve`), decoded through the same code as `image_path`;
  - `report_text`: a report (or any text) to embed.
A row gives at most one image and/or a report; a missing value (None/NaN) means "not given".
Output: a DataFrame with `image_embedding` (when an image column is present) and/or
`text_embedding` (when `report_text` is present) columns: L2-normalized lists in the shared
CLIP space, None where that row had no input for it.

Bad input (no usable column, a row with nothing to embed, an empty or non-string report, a
missing image file, undecodable base64 or image bytes) raises an MlflowException with
INVALID_PARAMETER_VALUE naming the column and row, which the scoring server answers with
HTTP 400 and that message.
"""

from __future__ import annotations

import base64
import binascii
import tempfile
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

TEXT_ENCODER = "text_encoder"
CLIP_MODEL = "clip_model"

IMAGE_PATH = "image_path"
IMAGE_BASE64 = "image_base64"
REPORT_TEXT = "report_text"
INPUT_COLUMNS = (IMAGE_PATH, IMAGE_BASE64, REPORT_TEXT)

# (leading bytes, offset, file suffix load_image_for_model dispatches on)
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", 0, ".png"), (b"\xff\xd8\xff", 0, ".jpg"),
                (b"DICM", 128, ".dcm"))


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


def model_signature():
    """The logged signature: every input column optional (strings), the embeddings out."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema([ColSpec(DataType.string, name, required=False) for name in INPUT_COLUMNS])
    outputs = Schema([ColSpec(Array(DataType.double), name, required=False)
                      for name in ("image_embedding", "text_embedding")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _bad_input(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, (str, bytes, Path)) or np.ndim(value) != 0:
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _decode_base64_image(value, row: int, folder: Path) -> Path:
    """base64 text of a PNG/JPG/DICOM file -> that file written into `folder` (the suffix
    load_image_for_model dispatches on is taken from the bytes, not from the client)."""
    where = f"{IMAGE_BASE64} row {row}"
    if not isinstance(value, str):
        raise _bad_input(f"{where}: expected a base64 string, got {type(value).__name__}")
    text = "".join(value.split())  # `base64` wraps its output at 76 characters
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]  # a data URL: data:image/png;base64,....
    if not text:
        raise _bad_input(f"{where}: empty string")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise _bad_input(f"{where}: not valid base64 ({error})") from None
    suffix = next((s for magic, at, s in _IMAGE_MAGIC if data[at:at + len(magic)] == magic), None)
    if suffix is None:
        raise _bad_input(f"{where}: the decoded {len(data)} bytes are not a PNG, JPEG or "
                         "DICOM file")
    file = folder / f"row{row}{suffix}"
    file.write_bytes(data)
    return file


def _image_files(frame: pd.DataFrame, folder: Path) -> dict[int, tuple[str, Path]]:
    """row position -> (the column it came from, the image file to read), rows with an image."""
    files: dict[int, tuple[str, Path]] = {}
    paths = frame[IMAGE_PATH].tolist() if IMAGE_PATH in frame else [None] * len(frame)
    encoded = frame[IMAGE_BASE64].tolist() if IMAGE_BASE64 in frame else [None] * len(frame)
    for row, (path, data) in enumerate(zip(paths, encoded)):
        if not _missing(path) and not _missing(data):
            raise _bad_input(f"row {row}: both {IMAGE_PATH} and {IMAGE_BASE64} are set; "
                             "send one image per row")
        if not _missing(data):
            files[row] = (IMAGE_BASE64, _decode_base64_image(data, row, folder))
        elif not _missing(path):
            if not isinstance(path, (str, Path)) or not str(path).strip():
                raise _bad_input(f"{IMAGE_PATH} row {row}: expected a file path, got {path!r}")
            if not Path(path).is_file():
                raise _bad_input(f"{IMAGE_PATH} row {row}: no such file where the model runs: "
                                 f"{path} (over HTTP, send the file's bytes as {IMAGE_BASE64})")
            files[row] = (IMAGE_PATH, Path(path))
    return files


def _report_texts(frame: pd.DataFrame) -> dict[int, str]:
    """row position -> report, rows with a report (None/NaN: not given)."""
    texts: dict[int, str] = {}
    for row, text in enumerate(frame[REPORT_TEXT].tolist()):
        if _missing(text):
            continue
        if not isinstance(text, str):
            raise _bad_input(f"{REPORT_TEXT} row {row}: expected a string, got "
                             f"{type(text).__name__} {text!r}")
        if not text.strip():
            raise _bad_input(f"{REPORT_TEXT} row {row}: empty text")
        texts[row] = text
    return texts


class CxrClipPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from cxr_assets.clip.model import load_clip_model
        from cxr_assets.text.encoder import TextEncoder

        self.text_encoder = TextEncoder.from_pretrained(Path(context.artifacts[TEXT_ENCODER]))
        self.clip = load_clip_model(Path(context.artifacts[CLIP_MODEL]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        present = [c for c in INPUT_COLUMNS if c in frame]
        if not present:
            got = f" (got {list(frame.columns)})" if len(frame.columns) else ""
            raise _bad_input(
                "model input needs at least one of the columns 'image_path', 'image_base64' "
                "(base64 of a PNG/JPG/DICOM file), 'report_text'; other columns are ignored"
                + got)
        out = pd.DataFrame(index=frame.index)
        with tempfile.TemporaryDirectory(prefix="cxr-pyfunc-") as folder:
            images = _image_files(frame, Path(folder))
            texts = _report_texts(frame) if REPORT_TEXT in frame else {}
            empty = [row for row in range(len(frame)) if row not in images and row not in texts]
            if empty:
                raise _bad_input(f"row {empty[0]} has nothing to embed: give it an image_path, "
                                 f"an image_base64 or a report_text ({len(empty)} such rows)")
            if IMAGE_PATH in frame or IMAGE_BASE64 in frame:
                out["image_embedding"] = self._embed_images(images, len(frame))
        if REPORT_TEXT in frame:
            out["text_embedding"] = self._embed_texts(texts, len(frame))
        return out

    def _embed_images(self, images: dict[int, tuple[str, Path]], n_rows: int) -> list:
        import torch

        size = self.clip.config.image_size
        tensors = []
        for row, (column, file) in images.items():
            try:
                tensors.append(load_image_for_model(file, size))
            except Exception as error:  # noqa: BLE001 - PIL, pydicom and our checks differ
                # The temporary file of a base64 image means nothing to the client.
                why = str(error).replace(str(file), "the decoded bytes" if column == IMAGE_BASE64
                                         else str(file))
                raise _bad_input(f"{column} row {row}: cannot decode the image "
                                 f"({type(error).__name__}: {why})") from None
        vectors: dict[int, list[float]] = {}
        if tensors:
            with torch.inference_mode():
                emb = self.clip.encode_image(torch.stack(tensors)).numpy()
            vectors = {row: v.tolist() for row, v in zip(images, emb)}
        return [vectors.get(row) for row in range(n_rows)]

    def _embed_texts(self, texts: dict[int, str], n_rows: int) -> list:
        import torch

        vectors: dict[int, list[float]] = {}
        if texts:
            batch = list(texts.values())
            if self.clip.text_tower is not None:
                # LoRA-trained text tower: the model's own (merged) encoder, not the cached one.
                with torch.inference_mode():
                    emb = self.clip.encode_reports(batch).numpy()
            else:
                raw = self.text_encoder.encode(
                    batch, instruction=self.text_encoder.instruction or None, progress=False)
                with torch.inference_mode():
                    emb = self.clip.encode_text(torch.from_numpy(raw)).numpy()
            vectors = {row: v.tolist() for row, v in zip(texts, emb)}
        return [vectors.get(row) for row in range(n_rows)]


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
        signature=model_signature(),
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
