"""The registered champion served over HTTP with `mlflow models serve` (issue #18, point 5).

A tiny model (random CLIP over the 2-layer test LLM) is logged and registered in a throwaway
sqlite store, given the `champion` alias, and served from `models:/<name>@champion` with the
local environment on 127.0.0.1. Its answers to a report and to images sent as base64 must equal
the in-process pyfunc embeddings; malformed requests must get HTTP 400 naming the problem.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

MODEL_NAME = "cxr-serving-test"
REPORT = "FINDINGS: Small left pleural effusion. IMPRESSION: No pneumothorax."
START_TIMEOUT_S = 180  # a loaded 2-core machine needs well over a minute to import torch


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_png(path: Path, seed: int) -> Path:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (48, 40), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path


def _write_dicom(path: Path, seed: int) -> Path:
    from cxr_assets.demo.dicom_writer import ImageHeader, deterministic_uid, write_dicom

    header = ImageHeader(
        patient_id="anon", patient_name="ANON", patient_sex="O", patient_age="050Y",
        study_uid=deterministic_uid("study", seed), series_uid=deterministic_uid("series", seed),
        sop_uid=deterministic_uid("sop", seed), study_id="1", study_date="20260101",
        study_time="120000", study_description="CHEST", institution="TEST", modality="CR",
        view_position="PA", photometric="MONOCHROME1", bits_stored=12, pixel_spacing_mm=0.2)
    stored = np.random.default_rng(seed).integers(0, 4096, (40, 48), dtype=np.uint16)
    write_dicom(path, stored, header)
    return path


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body)
        except ValueError:
            return error.code, {"raw": body.decode("utf-8", "replace")}


def _split(columns: list[str], rows: list[list]) -> dict:
    return {"dataframe_split": {"columns": columns, "data": rows}}


@pytest.fixture(scope="module")
def served(tiny_llm, tmp_path_factory):
    """(invocations URL, the champion loaded in-process, a folder of test images)."""
    import mlflow
    import torch

    from cxr_assets.clip.model import ClipModelConfig, DualTowerClip, save_clip_model
    from cxr_assets.registry.pyfunc_model import log_clip_pyfunc
    from cxr_assets.registry.tracking import CHAMPION
    from cxr_assets.text.encoder import TextEncoder

    root = tmp_path_factory.mktemp("serving")
    encoder = TextEncoder.from_base(tiny_llm, max_length=48)
    encoder.save_pretrained(root / "text_encoder")
    torch.manual_seed(0)
    clip = DualTowerClip(ClipModelConfig("resnet10t", 32, encoder.dim, 16, 2.0, 4.6)).eval()
    save_clip_model(clip, root / "clip_model")

    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    server = None
    log = root / "server.log"
    try:
        experiment = mlflow.create_experiment(
            "serving", artifact_location=(root / "mlartifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = log_clip_pyfunc(root / "text_encoder", root / "clip_model", MODEL_NAME)
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, str(info.registered_model_version))
        model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")

        port = _free_port()
        # `mlflow models serve` execs `uvicorn` from PATH: the venv's bin, as if activated.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": uri,
               "MLFLOW_REGISTRY_URI": uri, "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        with open(log, "wb") as out:  # a file, not a pipe: nobody drains a pipe while we wait
            server = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "models", "serve",
                 "-m", f"models:/{MODEL_NAME}@{CHAMPION}", "--env-manager", "local",
                 "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)  # its own process group: uvicorn's workers go with it
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"`mlflow models serve` exited with {server.returncode} before "
                            f"answering /ping; its log ends:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"`mlflow models serve` did not answer {base}/ping within "
                            f"{START_TIMEOUT_S} s; its log ends:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        images = root / "images"
        images.mkdir()
        yield f"{base}/invocations", model, images
    finally:
        if server is not None and server.poll() is None:
            try:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(server.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                server.wait(timeout=20)
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def _embeddings(predictions: list[dict], column: str) -> np.ndarray:
    return np.asarray([row[column] for row in predictions], dtype=np.float32)


def test_report_and_images_match_in_process_embeddings(served):
    url, model, images = served
    png, dicom = _write_png(images / "a.png", 1), _write_dicom(images / "b.dcm", 2)

    status, body = _post(url, _split(["report_text"], [[REPORT]]))
    assert status == 200, body
    expected = model.predict(pd.DataFrame({"report_text": [REPORT]}))
    assert list(body["predictions"][0]) == ["text_embedding"]
    np.testing.assert_allclose(_embeddings(body["predictions"], "text_embedding"),
                               np.asarray(expected["text_embedding"].tolist()), atol=1e-5)

    status, body = _post(url, _split(["image_base64"], [[_b64(png)], [_b64(dicom)]]))
    assert status == 200, body
    expected = model.predict(pd.DataFrame({"image_path": [str(png), str(dicom)]}))
    served_images = _embeddings(body["predictions"], "image_embedding")
    assert served_images.shape == (2, 16)
    np.testing.assert_allclose(served_images, np.asarray(expected["image_embedding"].tolist()),
                               atol=1e-5)
    assert not np.allclose(served_images[0], served_images[1])

    # One request, both kinds: a row may carry an image, a report, or both.
    status, body = _post(url, _split(["image_base64", "report_text"],
                                     [[_b64(png), REPORT], [None, REPORT]]))
    assert status == 200, body
    first, second = body["predictions"]
    np.testing.assert_allclose(first["image_embedding"], served_images[0], atol=1e-5)
    np.testing.assert_allclose(second["text_embedding"], first["text_embedding"], atol=1e-5)
    assert second.get("image_embedding") is None


@pytest.mark.parametrize("payload, problem", [
    (_split(["report"], [[REPORT]]), "needs at least one of the columns"),
    (_split(["image_base64"], [["this is not base64!"]]), "image_base64 row 0: not valid base64"),
    (_split(["image_base64"], [[base64.b64encode(b"hello").decode()]]),
     "image_base64 row 0: the decoded 5 bytes are not a PNG, JPEG or DICOM file"),
    (_split(["image_base64"], [[base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 20).decode()]]),
     "image_base64 row 0: cannot decode the image"),
    (_split(["image_path"], [["/nonexistent/x.png"]]),
     "image_path row 0: no such file where the model runs"),
    (_split(["report_text"], [[REPORT], ["  "]]), "report_text row 1: empty text"),
    (_split(["report_text"], [[None]]), "row 0 has nothing to embed"),
], ids=["unknown-column", "bad-base64", "not-an-image", "corrupt-png", "missing-path",
        "empty-report", "null-report"])
def test_malformed_requests_get_400_naming_the_problem(served, payload, problem):
    url, _, _ = served
    status, body = _post(url, payload)
    assert status == 400, (status, body)
    assert body.get("error_code") == "INVALID_PARAMETER_VALUE", body
    assert problem in body.get("message", ""), body
