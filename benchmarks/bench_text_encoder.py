"""Report-encoding speed and fidelity: our encode paths vs the official llm2vec 0.2.3.

Our rows run the demo default's released encoder (the adapted SmolLM2-135M body, mean |
latent-attention head, post-processing: what report_embeddings runs) through each encode path of
cxr_assets/text/encode_paths.py: fp32, the body exported to OpenVINO (fp32, bf16, int8 weights),
SmoothQuant-style int8 (int8_smooth), bf16 Linear layers
(fp32 elsewhere), bf16 weights, bf16 compiled (steady state; its compile time in the warm-up
column), bf16 autocast, int8 dynamic, fp32 with the old fixed-count batches (no token budget:
what length bucketing by padded tokens saves), and
`auto`, the stage's own choice (probe included in its own column). llm2vec and the plain padded
forward run the base body with mean pooling (the same matrix products; the head is ~1% of them).
Same 256 real IU reports (findings + impression), 2 torch threads, batch 32, max_length 512. Each
candidate runs in its own subprocess, so its peak resident memory (ru_maxrss) is its own.
llm2vec 0.2.3 pins transformers 4.44, so it runs from its own virtual environment
(.cache/cxr/bench/llm2vec-0.2.3, created on first use with pip), on a copy of the SmolLM2 folder
converted as ../shared/docs/PEER_BASELINES.md describes.

Fidelity: cosine of each of our paths' embeddings to our fp32 ones (mean and min; the bar for a
path the stage may pick on its own: mean >= 0.999, min >= 0.99), and for the path `auto` picks,
the held-out text-tower metrics (300 IU reports, the evaluation of text/heldout.py) beside fp32's.

Compute ceiling: a last subprocess times the model's own Linear shapes (q/k/v/o, gate/up/down
of every layer, on 2,048 token rows) with the same 2 threads, in fp32, bf16 and int8 (the
int8 x int8 -> int32 product alone), and counts the real tokens of the reports. tokens x (Linear time per token) is the time the matrix products
alone need on this CPU, whatever the library: its inverse is a ceiling on reports/s.

Results go to results/text_encoder_<isa>.json, one file per instruction-set class (avx512_bf16,
avx2, ...), so each CPU kind keeps its own table. BENCH_ISA=avx2 runs every candidate with
ATen, oneDNN, MKL and OpenVINO's own kernels limited to AVX2 (ATEN_CPU_CAPABILITY,
ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS, OV_CPU_MAX_ISA): an AVX2-only CPU emulated on a
bigger one, written to results/text_encoder_avx2-emulated.json. Partial: fbgemm's int8 kernels
and the MLAS matrix products inside OpenVINO pick their ISA from the CPU themselves.

    python benchmarks/bench_text_encoder.py            # or: python benchmarks/run.py text_encoder
    BENCH_SKIP_LLM2VEC=1 python benchmarks/bench_text_encoder.py   # without the peer venv
    BENCH_N_REPORTS=128 BENCH_CANDIDATES=ours_fp32,ours_bf16 python benchmarks/bench_text_encoder.py
    python benchmarks/bench_text_encoder.py --metrics-only bf16,bf16_autocast   # held-out metrics
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
N_REPORTS = int(os.environ.get("BENCH_N_REPORTS", "256"))
EMULATED_ISA = os.environ.get("BENCH_ISA", "").lower()  # "avx2": emulate an AVX2-only CPU
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


def demo_encoder_folder() -> Path:
    """The released encoder the demo default starts from (params.yaml text_encoder.init_from)."""
    sys.path.insert(0, str(ROOT))
    from cxr_assets.config import load_params

    init_from = load_params(ROOT / "params.yaml").text_encoder.init_from
    if not init_from:
        raise SystemExit("params.yaml has no text_encoder.init_from release to benchmark")
    return ROOT / init_from


OUR_PATHS = ("fp32", "fp32_fixed_batches", "openvino_fp32", "openvino_bf16", "openvino_int8",
             "int8_smooth", "bf16_linear", "bf16", "bf16_compiled", "bf16_autocast",
             "int8_dynamic", "auto")


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
    extra: dict = {}
    if name.startswith("ours_"):
        from cxr_assets.text.encode_paths import choose_path, convert_model
        from cxr_assets.text.encoder import TextEncoder

        path = name[len("ours_"):]
        encoder = TextEncoder.from_pretrained(demo_encoder_folder())
        encoder.max_length = MAX_LENGTH
        if path == "auto":
            start = time.perf_counter()
            choice = choose_path(encoder, texts, "auto", batch_size=BATCH)
            extra = {"chosen": choice.as_metadata(), "probe_s": time.perf_counter() - start}
        elif path not in ("fp32", "fp32_fixed_batches"):
            encoder.use_path(path, convert_model(encoder.model, path, encoder.tokenizer,
                                                    encoder.max_length, encoder.tapped_layers))
        # fp32_fixed_batches: batches of BATCH texts whatever their padded size (the old way).
        budget = {"max_batch_tokens": None} if path == "fp32_fixed_batches" else {}
        start = time.perf_counter()  # warm-up (allocator, kernels; bf16_compiled: compiling)
        encoder.encode(texts[:8], progress=False)
        extra["warmup_s"] = time.perf_counter() - start
        start = time.perf_counter()
        vectors = encoder.encode(texts, batch_size=BATCH, progress=False, **budget)
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
    out.write_text(json.dumps({"seconds": seconds, "peak_mb": _peak_mb(), "n": len(texts), **extra}))


HEADLINE = {"abbreviation": "R@1", "summarization": "R@10", "error_discrimination": "accuracy",
            "label_consistency": "P@10", "zero_shot": "mean_AUC"}
METRIC_REPORTS = 300  # the size of the release's own held-out table
METRIC_BAR = 0.005


def heldout_metrics(path: str, out: Path) -> None:
    """The five headline held-out metrics (300 IU reports) of the demo encoder through `path`."""
    import torch

    torch.set_num_threads(THREADS)
    sys.path.insert(0, str(ROOT))
    from cxr_assets.config import load_params
    from cxr_assets.text.encode_paths import convert_model
    from cxr_assets.text.encoder import TextEncoder
    from cxr_assets.text.evaluation import build_eval_set, evaluate_encoder, load_iu_reports

    te = load_params(ROOT / "params.yaml").text_encoder
    iu = load_iu_reports(IU_CSV, te.corpus.salt, te.corpus.heldout_fraction)
    data = build_eval_set(iu, METRIC_REPORTS, te.evaluation.seed)
    encoder = TextEncoder.from_pretrained(demo_encoder_folder())
    if path != "fp32":
        encoder.use_path(path, convert_model(encoder.model, path, encoder.tokenizer,
                                                    encoder.max_length, encoder.tapped_layers))
    rows = evaluate_encoder(encoder, data, path, batch_size=BATCH)
    out.write_text(json.dumps({f"{r['task']}/{r['metric']}": {"value": r["value"], "n": r["n"]}
                              for r in rows if HEADLINE.get(r["task"]) == r["metric"]}))


def run_metrics(paths: list[str], tmp: Path) -> dict[str, dict]:
    """{path: {metric: {value, n}}} for fp32 and `paths`, each path in its own subprocess."""
    metrics = {}
    for path in dict.fromkeys(["fp32", *paths]):
        out = tmp / f"metrics_{path}.json"
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--metrics", path, str(out)],
                       check=True, cwd=ROOT, env=isa_env())
        metrics[path] = json.loads(out.read_text())
    return metrics


def print_metrics(metrics: dict[str, dict]) -> None:
    paths = [p for p in metrics if p != "fp32"]
    print(f"\nheld-out metrics ({METRIC_REPORTS} IU reports), each path beside fp32 (bar: within "
          f"{METRIC_BAR}; one item of n moves a metric by 1/n):")
    print(f"  {'metric':<34}{'n':>5}{'fp32':>8}" + "".join(f"{p:>16}" for p in paths))
    for key, ref in metrics["fp32"].items():
        cells = "".join(f"{metrics[p][key]['value']:>9.4f} ({metrics[p][key]['value'] - ref['value']:+.3f})"
                        for p in paths)
        print(f"  {key:<34}{ref['n']:>5}{ref['value']:>8.4f}{cells}")


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
    # int8: the int8 x int8 -> int32 product alone (no quantization), what int8_smooth builds on.
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("int8", torch.int8)):
        layer_s = 0.0
        for fan_in, fan_out in shapes:
            if dtype == torch.int8:
                x = torch.randint(-63, 64, (rows, fan_in), dtype=dtype)
                w = torch.randint(-63, 64, (fan_out, fan_in), dtype=dtype)

                def product(x=x, w=w):
                    return torch._int_mm(x, w.t())
            else:
                x = torch.randn(rows, fan_in, dtype=dtype)
                w = torch.randn(fan_out, fan_in, dtype=dtype)

                def product(x=x, w=w):
                    return torch.nn.functional.linear(x, w)
            with torch.inference_mode():
                for _ in range(3):
                    product()
                start, reps = time.perf_counter(), 10
                for _ in range(reps):
                    product()
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


def isa_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    if EMULATED_ISA == "avx2":  # ATen's vector kernels, oneDNN, MKL, OpenVINO's JIT kernels: AVX2
        # OpenVINO needs its own cap beside oneDNN's: with oneDNN's alone its plugin still plans
        # bf16 (and fails to compile it) and runs its norms with AVX-512.
        env.update({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                    "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OV_CPU_MAX_ISA": "AVX2"})
    elif EMULATED_ISA:
        raise SystemExit(f"BENCH_ISA must be 'avx2' or unset, got {EMULATED_ISA!r}")
    return env


def isa_label() -> str:
    """Which CPU class a result file describes: emulated, or this CPU's best matrix-product ISA."""
    if EMULATED_ISA:
        return f"{EMULATED_ISA}-emulated"
    sys.path.insert(0, str(ROOT))
    from cxr_assets.text.encode_paths import cpu_flags

    flags = cpu_flags()
    for flag in ("amx_bf16", "avx512_bf16", "avx512f", "avx2"):
        if flag in flags:
            return flag
    return "baseline"


def run_candidate(name: str, tmp: Path) -> dict:
    out = tmp / f"{name}.json"
    env = isa_env()
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
    names = [f"ours_{path}" for path in OUR_PATHS] + ["plain_padded_fp32"]
    if not os.environ.get("BENCH_SKIP_LLM2VEC"):
        names = ["llm2vec_fp32", "llm2vec_bf16", *names]
    if os.environ.get("BENCH_CANDIDATES"):
        names = [n for n in os.environ["BENCH_CANDIDATES"].split(",") if n]
    results: dict[str, dict] = {}
    metrics: dict[str, dict] = {}
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
                       check=True, cwd=ROOT, env=isa_env())
        ceiling = json.loads(ceiling_file.read_text())
        # Each library's paths against its own fp32 (the plain forward is causal: no reference).
        for reference, group in (("ours_fp32", "ours_"), ("llm2vec_fp32", "llm2vec_")):
            if not (tmp / f"{reference}.npy").is_file():
                continue
            ref = np.load(tmp / f"{reference}.npy")
            for name in names:
                if (name.startswith(group) and (tmp / f"{name}.npy").is_file()
                        and "error" not in results[name]):
                    from cxr_assets.text.encode_paths import fidelity

                    mean_cos, min_cos = fidelity(ref, np.load(tmp / f"{name}.npy"))
                    results[name].update(fidelity_reference=reference, mean_cosine=mean_cos,
                                         min_cosine=min_cos)
        chosen = results.get("ours_auto", {}).get("chosen", {}).get("path")
        if chosen and chosen != "fp32" and not os.environ.get("BENCH_SKIP_METRICS"):
            metrics = run_metrics([chosen], tmp)  # the held-out metrics, fp32 beside the choice
    add_ratios(results)
    print(f"\n{N_REPORTS} IU reports, {THREADS} threads, batch {BATCH}, max_length {MAX_LENGTH}, "
          f"CPU class {isa_label()}")
    print(f"{'candidate':<26}{'reports/s':>10}{'x llm2vec':>10}{'x old fp32':>11}{'peak MB':>9}"
          f"{'mean cos':>10}{'min cos':>9}{'warm-up s':>10}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<26} failed: {r['error'][:60]}")
            continue
        ratio = f"{r['x_llm2vec_fp32']:.2f}" if "x_llm2vec_fp32" in r else "-"
        own = f"{r['x_fixed_batches_fp32']:.2f}" if "x_fixed_batches_fp32" in r else "-"
        mean_cos, min_cos = r.get("mean_cosine"), r.get("min_cosine")
        warmup = f"{r['warmup_s']:.1f}" if "warmup_s" in r else "-"
        print(f"{name:<26}{r['reports_per_s']:>10.2f}{ratio:>10}{own:>11}{r['peak_mb']:>9.0f}"
              f"{(f'{mean_cos:.5f}' if mean_cos is not None else '-'):>10}"
              f"{(f'{min_cos:.4f}' if min_cos is not None else '-'):>9}"
              f"{warmup:>10}")
    auto = results.get("ours_auto", {})
    if "chosen" in auto:
        print(f"\nauto chose {auto['chosen']['path']} (probe {auto['probe_s']:.1f} s): "
              f"{auto['chosen']['reason']}")
    if metrics:
        print_metrics(metrics)
    base = results.get("llm2vec_fp32", {}).get("reports_per_s")
    tokens_per_report = ceiling["tokens"] / ceiling["n"]
    print(f"\ncompute ceiling ({tokens_per_report:.0f} real tokens per report; the Linear layers alone, "
          f"timed with {THREADS} threads):")
    for dtype in ("fp32", "bf16", "int8"):
        top = ceiling["ceiling_reports_per_s"][dtype]
        ratio = f", {top / base:.2f}x llm2vec fp32" if base else ""
        print(f"  {dtype}: {ceiling['linear_gflops'][dtype]:.0f} GOP/s in the matrix products -> "
              f"at most {top:.2f} reports/s{ratio}")
    (HERE / "results").mkdir(exist_ok=True)
    command = (f"BENCH_ISA={EMULATED_ISA} " if EMULATED_ISA else "") + \
        f"BENCH_N_REPORTS={N_REPORTS} python benchmarks/bench_text_encoder.py"
    (HERE / "results" / f"text_encoder_{isa_label()}.json").write_text(json.dumps(
        {"n_reports": N_REPORTS, "threads": THREADS, "batch_size": BATCH,
         "max_length": MAX_LENGTH, "cpu_class": isa_label(), "results": results,
         "heldout_metrics": metrics, "compute_ceiling": ceiling,
         "provenance": provenance(command)}, indent=2) + "\n")


def add_ratios(results: dict[str, dict]) -> None:
    """Each row's speed relative to llm2vec fp32 and to our fp32 with fixed batches (stored, so
    the README quotes them from the file)."""
    for key, reference in (("x_llm2vec_fp32", "llm2vec_fp32"),
                           ("x_fixed_batches_fp32", "ours_fp32_fixed_batches")):
        base = results.get(reference, {}).get("reports_per_s")
        for row in results.values():
            if base and "reports_per_s" in row:
                row[key] = round(row["reports_per_s"] / base, 2)


def metrics_only(paths: list[str]) -> None:
    """Held-out metrics of `paths` beside fp32, added to this CPU class's result file (the
    evaluation takes minutes per path, so it can be run apart from the speed table)."""
    import tempfile

    file = HERE / "results" / f"text_encoder_{isa_label()}.json"
    stored = json.loads(file.read_text()) if file.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp_name:
        metrics = run_metrics(paths, Path(tmp_name))
    print_metrics(metrics)
    stored["heldout_metrics"] = {**stored.get("heldout_metrics", {}), **metrics}
    stored["heldout_metrics_provenance"] = provenance(
        f"python benchmarks/bench_text_encoder.py --metrics-only {','.join(paths)}")
    file.parent.mkdir(exist_ok=True)
    file.write_text(json.dumps(stored, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], Path(sys.argv[3]))
    elif len(sys.argv) >= 3 and sys.argv[1] == "--metrics-only":
        metrics_only(sys.argv[2].split(","))
    elif len(sys.argv) == 4 and sys.argv[1] == "--metrics":
        heldout_metrics(sys.argv[2], Path(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--ceiling":
        linear_ceiling(Path(sys.argv[2]))
    else:
        main()
