"""Report-encoding speed: our TextEncoder vs the official llm2vec 0.2.3 vs a plain padded forward.

Same model (the embedded SmolLM2-135M, bidirectional, mean pooling), same 512 real IU reports
(findings + impression), same 2 torch threads, batch 32, max_length 512, fp32 and bf16. Each
candidate runs in its own subprocess, so its peak resident memory (ru_maxrss) is its own.
llm2vec 0.2.3 pins transformers 4.44, so it runs from its own virtual environment
(.cache/cxr/bench/llm2vec-0.2.3, created on first use with pip), on a copy of the SmolLM2 folder
converted as ../shared/docs/PEER_BASELINES.md describes. Agreement: cosine of each candidate's
embeddings against ours in fp32.

Compute ceiling: a last subprocess times the model's own Linear shapes (q/k/v/o, gate/up/down
of every layer, on 2,048 token rows) with the same 2 threads, in fp32 and bf16, and counts the
real tokens of the reports. tokens x (Linear time per token) is the time the matrix products
alone need on this CPU, whatever the library: its inverse is a ceiling on reports/s (attention,
norms and activations come on top), printed beside the candidates.

    python benchmarks/bench_text_encoder.py            # or: python benchmarks/run.py text_encoder
    BENCH_SKIP_LLM2VEC=1 python benchmarks/bench_text_encoder.py   # without the peer venv
    BENCH_N_REPORTS=128 BENCH_CANDIDATES=llm2vec_fp32,ours_fp32 python benchmarks/bench_text_encoder.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # machine, ISA flags, date, command of each result

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
IU_CSV = ROOT.parent / "shared" / "data" / "iu_xray" / "indiana_reports.csv"
# BENCH_N_REPORTS / BENCH_CANDIDATES (comma list) shrink a run on a busy machine.
N_REPORTS = int(os.environ.get("BENCH_N_REPORTS", "512"))
THREADS, BATCH, MAX_LENGTH = 2, 32, 512
PEER_VENV = ROOT / ".cache" / "cxr" / "bench" / "llm2vec-0.2.3"
PEER_PINS = ["torch==2.13.0", "llm2vec==0.2.3"]


def reports() -> list[str]:
    import polars as pl

    frame = pl.read_csv(IU_CSV, infer_schema_length=0)
    texts = []
    for f, i in zip(frame["findings"].to_list(), frame["impression"].to_list()):
        text = " ".join(t.strip() for t in (f, i) if t and t.strip())
        if text:
            texts.append(text)
    return texts[:N_REPORTS]


def smollm2_folder() -> Path:
    sys.path.insert(0, str(ROOT))
    from cxr_assets.text.base_model import resolve_base_model

    return resolve_base_model("smollm2-gguf", ROOT / ".cache" / "cxr" / "base_models")


# --------------------------------------------------------------------------- workers (subprocess)
def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(name: str, out: Path) -> None:
    """Run one candidate in this process; write {seconds, peak_mb, embeddings file}."""
    import numpy as np
    import torch

    torch.set_num_threads(THREADS)
    sys.path.insert(0, str(ROOT))
    texts = reports()
    folder = smollm2_folder()
    if name.startswith("ours"):
        from cxr_assets.text.encoder import TextEncoder

        encoder = TextEncoder.from_base(folder, pooling="mean", max_length=MAX_LENGTH,
                                        dtype="bfloat16" if name.endswith("bf16") else "float32")
        encoder.encode(texts[:8], progress=False)  # warm-up (allocator, kernels)
        start = time.perf_counter()
        vectors = encoder.encode(texts, batch_size=BATCH, progress=False)
    elif name == "plain_padded_fp32":
        from transformers import AutoModel, AutoTokenizer

        model = AutoModel.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        tokenizer.padding_side = "left"

        def run(batch_texts: list[str]) -> np.ndarray:
            outs = []
            with torch.inference_mode():
                for s in range(0, len(batch_texts), BATCH):
                    batch = tokenizer(batch_texts[s:s + BATCH], padding=True, truncation=True,
                                      max_length=MAX_LENGTH, return_tensors="pt")
                    hidden = model(**batch).last_hidden_state
                    mask = batch["attention_mask"].unsqueeze(-1).float()
                    outs.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
            return np.concatenate(outs)

        run(texts[:8])
        start = time.perf_counter()
        vectors = run(texts)  # input order, padded to each batch's longest, causal (no change)
    else:
        raise SystemExit(f"unknown worker {name}")
    seconds = time.perf_counter() - start
    np.save(out.with_suffix(".npy"), np.asarray(vectors, dtype=np.float32))
    out.write_text(json.dumps({"seconds": seconds, "peak_mb": _peak_mb(), "n": len(texts)}))


def linear_ceiling(out: Path) -> None:
    """Time the model's Linear layers per token (fp32, bf16) and count the reports' real tokens."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    torch.set_num_threads(THREADS)
    folder = smollm2_folder()
    config = AutoConfig.from_pretrained(folder)
    hidden, inner = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    # (in, out) of every Linear in one decoder layer: q, k, v, o, gate, up, down.
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden),
              (hidden, inner), (hidden, inner), (inner, hidden)]
    rows = 2048
    per_token: dict[str, float] = {}
    gflops: dict[str, float] = {}
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        layer_s = 0.0
        for fan_in, fan_out in shapes:
            x = torch.randn(rows, fan_in, dtype=dtype)
            w = torch.randn(fan_out, fan_in, dtype=dtype)
            with torch.inference_mode():
                for _ in range(3):
                    torch.nn.functional.linear(x, w)
                start, reps = time.perf_counter(), 10
                for _ in range(reps):
                    torch.nn.functional.linear(x, w)
            layer_s += (time.perf_counter() - start) / reps
        per_token[label] = layer_s * config.num_hidden_layers / rows
        flops_per_token = 2 * sum(a * b for a, b in shapes) * config.num_hidden_layers
        gflops[label] = flops_per_token / per_token[label] / 1e9
    tokenizer = AutoTokenizer.from_pretrained(folder)
    lengths = [min(len(ids), MAX_LENGTH)
               for ids in tokenizer(reports(), add_special_tokens=True)["input_ids"]]
    out.write_text(json.dumps({
        "tokens": sum(lengths), "n": len(lengths),
        "linear_s_per_token": per_token, "linear_gflops": gflops,
        "ceiling_reports_per_s": {k: len(lengths) / (sum(lengths) * v) for k, v in per_token.items()},
    }))


PEER_WORKER = r'''
import json, resource, sys, time
import numpy as np, torch
from llm2vec import LLM2Vec
folder, texts_file, out, dtype, threads, batch, max_length = sys.argv[1:8]
torch.set_num_threads(int(threads))
texts = json.loads(open(texts_file).read())
kwargs = {"torch_dtype": torch.bfloat16} if dtype == "bf16" else {}
model = LLM2Vec.from_pretrained(folder, enable_bidirectional=True, pooling_mode="mean",
                                max_length=int(max_length), **kwargs)
model.encode(texts[:8], batch_size=int(batch), show_progress_bar=False)
start = time.perf_counter()
vectors = model.encode(texts, batch_size=int(batch), show_progress_bar=False)
seconds = time.perf_counter() - start
np.save(out[: -len(".json")] + ".npy", vectors.float().numpy())
open(out, "w").write(json.dumps({"seconds": seconds, "n": len(texts),
    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))
'''


def peer_folder(src: Path) -> Path:
    """A copy of the SmolLM2 folder that transformers 4.44 / tokenizers 0.19 read correctly."""
    import shutil

    dest = PEER_VENV.parent / "smollm2-for-llm2vec"
    if (dest / "config.json").is_file():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    cfg = json.loads((tmp / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"  # (1) no TokenizersBackend in 4.44
    cfg["model_input_names"] = ["input_ids", "attention_mask"]  # (3) no token_type_ids
    (tmp / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    tok = json.loads((tmp / "tokenizer.json").read_text())
    merges = tok.get("model", {}).get("merges", [])
    tok["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in merges]  # (2)
    (tmp / "tokenizer.json").write_text(json.dumps(tok))
    config = json.loads((tmp / "config.json").read_text())
    theta = (config.get("rope_parameters") or {}).get("rope_theta") or config.get("rope_theta")
    if theta is None:
        raise RuntimeError("SmolLM2 config has no rope_theta: cannot pin it for transformers 4.44")
    config["rope_theta"] = float(theta)  # (4) 4.44 ignores rope_parameters -> silent 10000
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(dest)
    return dest


def ensure_peer_venv() -> Path:
    python = PEER_VENV / "bin" / "python"
    if python.is_file() and subprocess.run([str(python), "-c", "import llm2vec"],
                                           capture_output=True, check=False).returncode == 0:
        return python
    PEER_VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PINS], check=True)
    return python


def run_candidate(name: str, tmp: Path) -> dict:
    out = tmp / f"{name}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    if name.startswith("llm2vec"):
        python = ensure_peer_venv()
        texts_file = tmp / "texts.json"
        texts_file.write_text(json.dumps(reports()))
        script = tmp / "peer_worker.py"
        script.write_text(PEER_WORKER)
        cmd = [str(python), str(script), str(peer_folder(smollm2_folder())), str(texts_file),
               str(out), name.rsplit("_", 1)[1], str(THREADS), str(BATCH), str(MAX_LENGTH)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, str(out)]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    result = json.loads(out.read_text())
    result["reports_per_s"] = result["n"] / result["seconds"]
    return result


def main() -> None:
    import tempfile

    import numpy as np

    if not IU_CSV.is_file():
        print(f"skipped: {IU_CSV} not found")
        return
    names = ["ours_fp32", "ours_bf16", "plain_padded_fp32"]
    if not os.environ.get("BENCH_SKIP_LLM2VEC"):
        names = ["llm2vec_fp32", "llm2vec_bf16", *names]
    if os.environ.get("BENCH_CANDIDATES"):
        names = [n for n in os.environ["BENCH_CANDIDATES"].split(",") if n]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in names:
            try:
                results[name] = run_candidate(name, tmp)
            except (subprocess.CalledProcessError, OSError, ValueError) as error:  # report the rest
                results[name] = {"error": f"{type(error).__name__}: {error}"}
                print(f"{name}: FAILED {error}", flush=True)
                continue
            print(f"{name}: {results[name]['reports_per_s']:.2f} reports/s", flush=True)
        ceiling_file = tmp / "ceiling.json"
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--ceiling", str(ceiling_file)],
                       check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
        ceiling = json.loads(ceiling_file.read_text())
        ref_file = tmp / "ours_fp32.npy"
        if ref_file.is_file():
            ref = np.load(ref_file)
            ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
            for name in names:
                if (tmp / f"{name}.npy").is_file() and "error" not in results[name]:
                    x = np.load(tmp / f"{name}.npy")
                    x = x / np.linalg.norm(x, axis=1, keepdims=True)
                    results[name]["min_cosine_vs_ours_fp32"] = float((x * ref).sum(1).min())
    base = results.get("llm2vec_fp32", {}).get("reports_per_s")
    print(f"\n{N_REPORTS} IU reports, SmolLM2-135M, {THREADS} threads, batch {BATCH}")
    print(f"{'candidate':<20}{'reports/s':>10}{'x llm2vec fp32':>16}{'peak MB':>9}{'min cos':>9}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<20} failed: {r['error'][:60]}")
            continue
        ratio = f"{r['reports_per_s'] / base:.2f}" if base else "-"
        cos = r.get("min_cosine_vs_ours_fp32")
        print(f"{name:<20}{r['reports_per_s']:>10.2f}{ratio:>16}{r['peak_mb']:>9.0f}"
              f"{(f'{cos:.4f}' if cos is not None else '-'):>9}")
    tokens_per_report = ceiling["tokens"] / ceiling["n"]
    print(f"\ncompute ceiling ({tokens_per_report:.0f} real tokens per report; the Linear layers alone, "
          f"timed with {THREADS} threads):")
    for dtype in ("fp32", "bf16"):
        top = ceiling["ceiling_reports_per_s"][dtype]
        ratio = f", {top / base:.2f}x llm2vec fp32" if base else ""
        print(f"  {dtype}: {ceiling['linear_gflops'][dtype]:.0f} GFLOP/s in the matrix products -> "
              f"at most {top:.2f} reports/s{ratio}")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "text_encoder.json").write_text(json.dumps(
        {"n_reports": N_REPORTS, "threads": THREADS, "batch_size": BATCH,
         "max_length": MAX_LENGTH, "results": results, "compute_ceiling": ceiling,
         "provenance": provenance(f"BENCH_N_REPORTS={N_REPORTS} python benchmarks/bench_text_encoder.py")},
        indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], Path(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--ceiling":
        linear_ceiling(Path(sys.argv[2]))
    else:
        main()
