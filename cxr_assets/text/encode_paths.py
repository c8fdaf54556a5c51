"""How a TextEncoder runs its forward pass (precision, device), and the choice among the ways.

The paths, all producing float32 embeddings:
- `fp32`: the reference. Always available.
- `bf16_linear`: the matrix products of every Linear layer in bf16 with weights cast once,
  everything else (residual stream, norms, attention, pooling) in fp32: what autocast computes,
  without autocast re-casting the weights at every call. Nearly as fast as `bf16` and closer to
  fp32 (bench_text_encoder.py: min cosine 0.9998 vs 0.9990; held-out metrics within 0.005,
  where `bf16` moves error discrimination by 2 items of 241). The first choice on native bf16.
- `bf16`: weights cast to bfloat16 (norms and pooling accumulate in float32). Fast only where the
  CPU multiplies bf16 natively (avx512_bf16, AMX); on an AVX2-only CPU bf16 is emulated and about
  5x slower than fp32 (measured, benchmarks/results/text_encoder*.json).
- `bf16_compiled`: `bf16` through torch.compile (inductor, frozen weights, dynamic shapes): 5-12%
  faster than `bf16` once compiled, but compiling costs 90-140 s on 2 cores, so it pays off only
  beyond ~20,000 reports and is never picked on its own; force it for a large archive.
- `bf16_autocast`: float32 weights and residual stream, matrix products in bf16 (torch.autocast,
  which re-casts the weights at every call: slower than `bf16_linear`, never picked).
- `int8_dynamic`: torch dynamic int8 Linear layers (per-tensor activation scales). SmolLM2 has
  massive activations (one token's down_proj output reaches ~1e4), so per-tensor scales wreck
  every other token: cosine to fp32 ~0.77 on average, ~0.59 at worst. Kept as a forced choice and a benchmark row, never
  picked on its own.
- `int8_smooth`: SmoothQuant-style int8, forced only. Per input channel, activation outliers
  move into the weights (`smooth_activations`: the same function in exact arithmetic), with
  scales from the activation maxima on a fixed set of calibration reports (the demo generator's, so the converted model
  depends on nothing but the encoder). Then q/k/gate/up (72% of the matrix-product work) run as int8 x int8 -> int32
  products (`torch._int_mm`, oneDNN's VNNI kernels), activations scaled per token (a
  massive-activation token gets its own scale instead of crushing the others, which is what
  breaks `int8_dynamic`) and weights per output channel; v/o/down_proj, the most sensitive to
  rounding, run as in `bf16_linear`. Measured (bench_text_encoder.py, 256 IU reports,
  avx512_bf16): 1.07x and 1.22x `bf16_linear` in two runs, cosine to fp32 0.9992 mean, 0.998
  min, but the held-out zero-shot AUC moves by -0.021 (bar: 0.005), so `auto` never picks it;
  with gate/up alone in int8 every metric but one stays within 0.005 (findings->impression R@10
  +0.008). On AVX2 without VNNI the int8 pair sums saturate 16 bits unless weights keep 7 bits
  (`int8_weight_levels`), and then even gate/up alone miss the cosine bar (0.9988 mean).
- `openvino_fp32`, `openvino_bf16`: the LLM body exported to OpenVINO (`openvino.convert_model`
  from the PyTorch module, no ONNX file) and compiled by its CPU plugin with inference precision
  f32 or bf16; pooling, head and post-processing stay in PyTorch. OpenVINO fuses the decoder's
  small operations (norms, rotary embedding, attention) that PyTorch runs one by one. Export and
  compile take ~15 s. Batches go to OpenVINO right-padded (`openvino_body`): a left-padded row's
  padding attends to nothing, and OpenVINO's softmax over an empty row is NaN, not zero. The
  plugin runs in throughput mode: one single-thread stream per torch thread, each batch cut into
  one part per stream (8% faster than one stream of two threads on 2 cores).
  `openvino_bf16` is the first choice on native bf16: measured (bench_text_encoder.py, 256 IU
  reports, avx512_bf16) 23.83 reports/s against fp32's 11.43 and `bf16_linear`'s 17.38 in the
  same run (75% of the bf16 compute ceiling of 31.58), cosine to fp32 0.99988 mean, 0.9993 min,
  every held-out metric within 0.005.
  `openvino_fp32` (the same arithmetic as fp32, cosine 1.0000; 1.13x fp32 there) is the first
  choice where bf16 is not native (AVX2).
- `openvino_int8`: the OpenVINO body with int8 weights (NNCF weight compression, per output
  channel; the CPU plugin quantizes activations per group on the fly): fast, but below the
  cosine bar on SmolLM2 (0.998 mean), so forced only.
- `cuda_bf16`: the model on the GPU in bfloat16.

`choose_path` ("auto") takes the candidates this machine supports (by its CPU flags, or a CUDA
device), best first, times each against fp32 on a probe sample of the texts about to be encoded
and checks its fidelity (cosine of the final embeddings to fp32: mean >= 0.999, min >= 0.99); it
keeps the first candidate that passes and is at least MIN_SPEEDUP x faster than fp32, else fp32.
A candidate that fails to run (a missing kernel, out of memory) is skipped, its error kept in the
probe. Every choice says why.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ENCODE_PATHS = ("fp32", "openvino_fp32", "openvino_bf16", "int8_smooth", "bf16_linear", "bf16",
                "bf16_compiled", "bf16_autocast", "int8_dynamic", "openvino_int8", "cuda_bf16")
OPENVINO_PATHS = ("openvino_fp32", "openvino_bf16", "openvino_int8")
REQUESTS = ("auto", *ENCODE_PATHS)
FIDELITY_MEAN, FIDELITY_MIN = 0.999, 0.99
# The probe encodes this many texts per path (plus a short warm-up): ~6 s of a 2-core CPU.
PROBE_TEXTS = 32
# Below this many texts the probe costs more than it saves (bf16 saves ~0.05 s a report on a
# 2-core CPU with avx512_bf16): fp32.
MIN_TEXTS_TO_PROBE = 200
# A candidate must beat fp32 by this factor on the probe (timing noise is a few percent).
MIN_SPEEDUP = 1.1
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The instruction-set flags of this CPU (Linux /proc/cpuinfo; empty where unreadable), less
    the bf16 ones when ONEDNN_MAX_CPU_ISA caps oneDNN below them (bf16 is emulated then)."""
    flags: frozenset[str] = frozenset()
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                flags = frozenset(value.split())
                break
    except OSError:
        pass
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap and cap not in ("ALL", "DEFAULT") and not any(k in cap for k in ("BF16", "AMX", "AVX10")):
        flags = flags - set(NATIVE_BF16_FLAGS)
    return flags


def auto_candidates(flags: frozenset[str], cuda: bool) -> tuple[list[str], str]:
    """(paths worth probing against fp32 on this machine, best first; why these)."""
    if cuda:
        return ["cuda_bf16"], "a CUDA device is available"
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    openvino = openvino_available()
    if native:
        return ([*(["openvino_bf16"] if openvino else []), "bf16_linear", "bf16"],
                f"the CPU multiplies bf16 natively ({', '.join(native)})")
    why_not_bf16 = ("the CPU has no native bf16 (no avx512_bf16/amx_bf16: bf16 is ~5x slower than "
                    "fp32 there), int8_dynamic fails the fidelity bar on SmolLM2's activation "
                    "outliers, and int8_smooth fails it with the 7-bit weights AVX2's int8 products "
                    "need")
    if openvino:
        return ["openvino_fp32"], f"{why_not_bf16}; OpenVINO's fused fp32 kernels"
    return [], why_not_bf16


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


class ComputePath:
    """One way of running the forward: the (converted) model and the context to run it in."""

    def __init__(self, name: str) -> None:
        if name not in ENCODE_PATHS:
            raise ValueError(f"encode path must be one of {ENCODE_PATHS}, got {name!r}")
        self.name = name

    def context(self) -> Any:
        if self.name == "bf16_autocast":
            import torch

            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return f"ComputePath({self.name!r})"


FP32 = ComputePath("fp32")


def bf16_linear_layers(model: Any) -> Any:
    """`model` (in place) with every nn.Linear replaced by a BF16Linear (see bf16_linear)."""
    import torch
    import torch.nn.functional as F

    class BF16Linear(torch.nn.Module):
        """y = x W^T + b with W, b stored in bf16 and x cast to bf16; y back in x's dtype."""

        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.weight = torch.nn.Parameter(linear.weight.detach().to(torch.bfloat16),
                                             requires_grad=False)
            self.bias = (None if linear.bias is None else torch.nn.Parameter(
                linear.bias.detach().to(torch.bfloat16), requires_grad=False))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, BF16Linear(child))
    return model


# SmoothQuant's migration strength (see smooth_activations). Measured on SmolLM2 (256 IU reports,
# calibrated on 64 others, every layer int8 but v_proj and down_proj): cosine to fp32 mean 0.9989
# at 0.5, 0.9990 at 0.6, 0.9989 at 0.8; without smoothing (every layer int8) 0.986.
SMOOTH_ALPHA = 0.6
CALIBRATION_REPORTS, CALIBRATION_SEED = 32, 20261206
INT8_KEPT = ("v_proj", "o_proj", "down_proj")  # rounding-sensitive: bf16 (native) or fp32


def int8_weight_levels(flags: frozenset[str]) -> int:
    """Largest int8 weight magnitude: 127 where the CPU sums int8 products in int32 (VNNI, AMX);
    63 on plain AVX2, whose u8 x s8 pair sums (vpmaddubsw) saturate at 16 bits beyond that."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    capped = cap and cap not in ("ALL", "DEFAULT") and not any(
        k in cap for k in ("VNNI", "BF16", "AMX", "AVX10"))
    vnni = any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    return 127 if vnni and not capped else 63


def _int8_linear(linear: Any, levels: int = 127) -> Any:
    """An nn.Linear as int8 x int8 -> int32 products: weights per output channel (at most
    `levels`), activations per token (scales computed on the fly), result in the input's dtype."""
    import torch

    class Int8Linear(torch.nn.Module):
        def __init__(self, source: torch.nn.Linear) -> None:
            super().__init__()
            weight = source.weight.detach().float()
            scale = weight.abs().amax(dim=1).clamp(min=1e-8) / levels
            self.in_features, self.out_features = source.in_features, source.out_features
            self.register_buffer("weight_int8", torch.round(weight / scale[:, None]).to(torch.int8))
            self.register_buffer("weight_scale", scale)
            self.register_buffer("bias", None if source.bias is None else source.bias.detach().float())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # Few passes over memory: they cost as much as the int8 product itself on 2 cores.
            flat = x.reshape(-1, self.in_features).float()
            peak = flat.abs().amax(dim=1, keepdim=True).clamp_(min=1e-8)
            quantized = (flat * (127.0 / peak)).round_().to(torch.int8)
            out = (torch._int_mm(quantized, self.weight_int8.t()) * (peak / 127.0))
            out = out.mul_(self.weight_scale)
            if self.bias is not None:
                out = out + self.bias
            return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    return Int8Linear(linear)


def _decoder_layers(model: Any) -> Any:
    """The Llama-style decoder layers (input_layernorm, self_attn.{q,k,v,o}_proj,
    post_attention_layernorm, mlp.{gate,up,down}_proj) that int8_smooth rewrites."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) and all(
                hasattr(layer, "input_layernorm") and hasattr(layer, "post_attention_layernorm")
                and hasattr(getattr(layer, "mlp", None), "up_proj") for layer in module):
            return module
    raise ValueError("encode path 'int8_smooth' needs a Llama-style decoder (input_layernorm, "
                     "self_attn q/k/v/o_proj, mlp gate/up/down_proj); this model has none")


def _activation_maxima(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> dict:
    """Per Linear layer, the largest |input| of each input channel over the texts (one at a
    time, so no padding enters the maxima)."""
    import torch

    maxima: dict[Any, torch.Tensor] = {}

    def record(module: Any, inputs: tuple, _output: Any) -> None:
        seen = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs().amax(dim=0)
        maxima[module] = seen if module not in maxima else torch.maximum(maxima[module], seen)

    hooks = [m.register_forward_hook(record) for m in model.modules()
             if isinstance(m, torch.nn.Linear)]
    try:
        with torch.inference_mode():
            for text in texts:
                ids = tokenizer(text, truncation=True, max_length=max_length,
                                return_tensors="pt")["input_ids"]
                model(input_ids=ids)
    finally:
        for hook in hooks:
            hook.remove()
    return maxima


def smooth_activations(model: Any, maxima: dict, alpha: float = SMOOTH_ALPHA) -> Any:
    """SmoothQuant's migration, in place: per input channel j of the Linear layers after each
    RMSNorm and of down_proj, x_j / s_j and W[:, j] * s_j with s_j = amax(x_j)^alpha /
    amax(W[:, j])^(1 - alpha). The division is folded into the norm's weight (q/k/v and gate/up)
    or into up_proj's output row (down_proj reads act(gate) * up), so the model computes the same
    function in exact arithmetic while its activations lose their outlier channels."""
    import torch

    def scales(activation_max: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
        weight_max = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0)
        return (activation_max.clamp(min=1e-5) ** alpha
                / weight_max.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)

    with torch.no_grad():
        for layer in _decoder_layers(model):
            attn, mlp = layer.self_attn, layer.mlp
            for norm, linears in ((layer.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj)),
                                  (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj))):
                scale = scales(maxima[linears[0]], [lin.weight for lin in linears])
                norm.weight.div_(scale)
                for lin in linears:
                    lin.weight.mul_(scale)
            scale = scales(maxima[mlp.down_proj], [mlp.down_proj.weight])
            mlp.up_proj.weight.div_(scale[:, None])
            mlp.down_proj.weight.mul_(scale)
    return model


def int8_smooth_layers(model: Any, tokenizer: Any, max_length: int = 128,
                       keep_bf16: bool = True) -> Any:
    """A copy of `model` converted for path `int8_smooth` (see the module docstring): smoothed on
    the calibration reports, then int8 Linear layers except INT8_KEPT (bf16 with `keep_bf16`,
    else fp32)."""
    import torch

    from cxr_assets.demo.generate import sample_reports

    converted = copy.deepcopy(model).float().eval()
    layers = _decoder_layers(converted)
    texts = sample_reports(CALIBRATION_REPORTS, CALIBRATION_SEED)
    smooth_activations(converted, _activation_maxima(converted, tokenizer, texts, max_length))
    levels = int8_weight_levels(cpu_flags())
    for layer in layers:
        for parent, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                              (layer.mlp, ("gate_proj", "up_proj", "down_proj"))):
            for name in names:
                linear = getattr(parent, name)
                if name not in INT8_KEPT:
                    setattr(parent, name, _int8_linear(linear, levels))
                elif keep_bf16:
                    setattr(parent, name, bf16_linear_layers(torch.nn.Sequential(linear))[0])
    return converted


@functools.cache
def _openvino_body_class() -> type:
    """The torch module that runs a compiled OpenVINO body (built once: torch is imported lazily).

    A module-level class holding its compiled model as an attribute, not a class made per call
    that closes over it: a per-call class sits in a reference cycle, so its compiled model (and
    OpenVINO's threads and buffers) would be freed at some later garbage collection, wherever
    that falls, instead of when the encoder lets the body go."""
    import types

    import torch

    class OpenVINOBody(torch.nn.Module):
        def __init__(self, compiled: Any, hidden_layers: tuple[int, ...]) -> None:
            super().__init__()
            self.compiled = compiled
            self.hidden_layers = tuple(hidden_layers)
            n_requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            self.requests = [compiled.create_infer_request() for _ in range(n_requests)]
            # embed_batch reads the body's device from its parameters: this one says "cpu".
            self.device_anchor = torch.nn.Parameter(torch.empty(0), requires_grad=False)

        def forward(self, input_ids, attention_mask, position_ids, **_: Any) -> Any:
            # Real tokens first (right padding), then back to the caller's layout.
            order = torch.argsort(1 - attention_mask, dim=1, stable=True)
            inputs = [t.gather(1, order) for t in (input_ids, attention_mask, position_ids)]
            lengths = attention_mask.sum(dim=1)
            parts = [rows for rows in torch.arange(len(lengths)).tensor_split(len(self.requests))
                     if len(rows)]
            running = []
            for request, rows in zip(self.requests, parts):
                # Right-padded, so columns past the part's longest row hold only padding.
                width = max(1, int(lengths[rows].max()))
                request.start_async([t[rows, :width].numpy() for t in inputs])
                running.append((request, rows))
            outputs: list[Any] = [None] * (1 + len(self.hidden_layers))  # last, then each tap
            for request, rows in running:
                request.wait()
                for i in range(len(outputs)):
                    part = torch.from_numpy(np.array(request.get_output_tensor(i).data,
                                                     dtype=np.float32))
                    if outputs[i] is None:
                        outputs[i] = part.new_zeros(*attention_mask.shape, part.shape[-1])
                    outputs[i][rows, :part.shape[1]] = part
            restore = torch.argsort(order, dim=1).unsqueeze(-1).expand(-1, -1,
                                                                       outputs[0].shape[-1])
            padding = attention_mask.unsqueeze(-1) == 0
            outputs = [o.gather(1, restore).masked_fill(padding, 0.0) for o in outputs]
            return types.SimpleNamespace(last_hidden_state=outputs[0],
                                         hidden_states=dict(zip(self.hidden_layers, outputs[1:])))

    return OpenVINOBody


def openvino_body(model: Any, name: str, tokenizer: Any, hidden_layers: tuple[int, ...] = ()
                  ) -> Any:
    """`model` (a Hugging Face decoder body, fp32) exported to OpenVINO and compiled for this CPU,
    wrapped as a torch module with the body's call signature (input_ids, attention_mask,
    position_ids -> .last_hidden_state), so pooling and the head run unchanged. hidden_layers:
    the hidden states a mean tap reads (pooling.MeanTaps) are exported too, as
    `.hidden_states[layer]`."""
    import warnings

    import openvino as ov
    import torch

    from cxr_assets.text.tokenization import position_ids_from_mask, tokenize_with_instruction

    if name not in OPENVINO_PATHS:
        raise ValueError(f"not an OpenVINO path: {name!r} (one of {OPENVINO_PATHS})")
    if tokenizer is None:
        raise ValueError(f"encode path {name!r} needs the encoder's tokenizer (export example)")

    hidden_layers = tuple(hidden_layers)

    class LastHidden(torch.nn.Module):  # what is exported: tensors in, tensors out, no KV cache
        def __init__(self, body: Any) -> None:
            super().__init__()
            self.body = body

        def forward(self, input_ids, attention_mask, position_ids):
            out = self.body(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids, use_cache=False,
                            output_hidden_states=bool(hidden_layers))
            if not hidden_layers:
                return out.last_hidden_state
            return (out.last_hidden_state, *(out.hidden_states[i] for i in hidden_layers))

    example = tokenize_with_instruction(
        tokenizer, ["No pleural effusion.", "Small left pleural effusion with adjacent atelectasis."],
        None, 64)
    inputs = (example["input_ids"], example["attention_mask"],
              position_ids_from_mask(example["attention_mask"]))
    try:
        # Tracing warns about the attention code's shape branches (single-token queries, the
        # causal flag with an explicit mask): an encoder always passes the mask, so they are moot.
        # share_weights=False: the exported graph owns copies of the weights, so nothing in
        # OpenVINO points into the PyTorch model's memory or holds its Python objects (which
        # OpenVINO's own threads could otherwise release).
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            exported = ov.convert_model(LastHidden(model.eval()), example_input=inputs,
                                        input=[ov.PartialShape([-1, -1])] * 3,
                                        share_weights=False)
    except Exception as error:  # OpenVINO's conversion errors are not RuntimeErrors
        raise RuntimeError(f"OpenVINO could not export the {type(model).__name__} body: "
                           f"{error}"[:2000]) from error
    if name == "openvino_int8":
        try:
            import nncf
        except ModuleNotFoundError as error:
            raise ValueError("encode path 'openvino_int8' needs NNCF (pip install nncf)") from error
        exported = nncf.compress_weights(exported, mode=nncf.CompressWeightsMode.INT8_ASYM)
    precision = "bf16" if name == "openvino_bf16" else "f32"
    # Throughput mode: OpenVINO splits the threads into streams (two single-thread streams on two
    # cores), and each batch is cut into one part per stream, run side by side. Measured on the
    # demo encoder, 256 IU reports, 2 cores, bf16: 25.2 reports/s against 23.2 for one stream of
    # two threads (less synchronisation per operator, and each part trimmed to its own length).
    compiled = ov.Core().compile_model(exported, "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "THROUGHPUT",
        "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    return _openvino_body_class()(compiled, hidden_layers)


def convert_model(model: Any, name: str, tokenizer: Any = None, max_length: int = 128,
                  hidden_layers: tuple[int, ...] = ()) -> Any:
    """A copy of an fp32 `model` prepared for path `name` (the fp32 model itself for fp32/autocast).
    int8_smooth calibrates on tokenized reports, so it needs the encoder's `tokenizer`. An
    exported body (OpenVINO) outputs the `hidden_layers` a mean tap reads besides its last one."""
    import torch

    if name in ("fp32", "bf16_autocast"):
        return model
    if name == "int8_smooth":
        if tokenizer is None:
            raise ValueError("encode path 'int8_smooth' needs the encoder's tokenizer to calibrate")
        native = any(f in cpu_flags() for f in NATIVE_BF16_FLAGS)
        return int8_smooth_layers(model, tokenizer, max_length, keep_bf16=native)
    if name == "bf16_linear":
        converted = bf16_linear_layers(copy.deepcopy(model))
        converted.set_attn_implementation("eager")  # see bf16 below (measured 19.6 vs 18.6)
        return converted
    if name == "bf16":
        converted = copy.deepcopy(model).to(torch.bfloat16)
        # Report-length sequences: eager attention (plain bmm + softmax) beats the CPU SDPA
        # kernel in bf16 (measured 17.4 vs 15.2 reports/s, bench_text_encoder.py conditions).
        converted.set_attn_implementation("eager")
        return converted
    if name == "bf16_compiled":
        # freezing: weights become constants, so inductor pre-packs them for oneDNN.
        return torch.compile(convert_model(model, "bf16"), dynamic=True,
                             options={"freezing": True})
    if name in OPENVINO_PATHS:
        return openvino_body(model, name, tokenizer, hidden_layers)
    if name == "cuda_bf16":
        if not torch.cuda.is_available():
            raise ValueError("encode path 'cuda_bf16' needs a CUDA device; none is visible")
        return copy.deepcopy(model).to("cuda", dtype=torch.bfloat16)
    if name == "int8_dynamic":
        import warnings

        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():  # torch.ao's deprecation notice: this row is a reference
            warnings.simplefilter("ignore")
            return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=False)
    raise ValueError(f"encode path must be one of {ENCODE_PATHS}, got {name!r}")


def fidelity(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(mean, min) cosine between matching rows."""
    a = reference / np.linalg.norm(reference, axis=1, keepdims=True).clip(1e-12)
    b = candidate / np.linalg.norm(candidate, axis=1, keepdims=True).clip(1e-12)
    cosines = (a * b).sum(axis=1)
    return float(cosines.mean()), float(cosines.min())


@dataclass
class PathChoice:
    """What `choose_path` decided, for the stage's metadata."""

    path: str
    requested: str
    reason: str
    cpu_flags: list[str] = field(default_factory=list)
    probe: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> speed, fidelity

    def as_metadata(self) -> dict[str, Any]:
        return asdict(self)


def _timed_encode(encoder: Any, texts: list[str], batch_size: int) -> tuple[np.ndarray, float]:
    encoder.encode(texts[:8], batch_size=batch_size, progress=False)  # warm-up (kernels, allocator)
    start = time.perf_counter()
    vectors = encoder.encode(texts, batch_size=batch_size, progress=False)
    return vectors, time.perf_counter() - start


def choose_path(encoder: Any, texts: list[str], requested: str = "auto",
                batch_size: int = 16) -> PathChoice:
    """Set `encoder`'s compute path (its model is replaced by the converted one) and say why.

    requested: 'auto' probes as the module docstring says; a path name forces it (no probe).
    texts: what is about to be encoded; the probe uses its first PROBE_TEXTS distinct texts.
    """
    import torch

    if requested not in REQUESTS:
        raise ValueError(f"text_encoder.encode_path must be one of {REQUESTS}, got {requested!r}")
    flags = cpu_flags()
    shown_flags = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    if encoder.compute.name != "fp32":
        raise ValueError(f"the encoder already runs path {encoder.compute.name!r}; choose from fp32")
    if requested != "auto":
        encoder.use_path(requested, convert_model(encoder.model, requested, encoder.tokenizer,
                                                  encoder.max_length, encoder.tapped_layers))
        return PathChoice(requested, requested, "forced by text_encoder.encode_path", shown_flags)
    candidates, why = auto_candidates(flags, torch.cuda.is_available())
    distinct = list(dict.fromkeys(t for t in texts if isinstance(t, str) and t.strip()))
    if not candidates:
        return PathChoice("fp32", requested, f"fp32: {why}", shown_flags)
    if len(distinct) < MIN_TEXTS_TO_PROBE:
        return PathChoice("fp32", requested, f"fp32: only {len(distinct)} texts to encode (a probe "
                          f"of the faster paths pays off from {MIN_TEXTS_TO_PROBE})", shown_flags)
    sample = distinct[:PROBE_TEXTS]
    reference, fp32_s = _timed_encode(encoder, sample, batch_size)
    probe: dict[str, dict[str, Any]] = {"fp32": {"seconds": fp32_s, "speedup": 1.0}}
    fp32_model, best = encoder.model, None
    for name in candidates:  # best first: the first that passes is kept
        if best is not None:
            break
        try:
            encoder.use_path(name, convert_model(fp32_model, name, encoder.tokenizer,
                                                 encoder.max_length, encoder.tapped_layers))
            vectors, seconds = _timed_encode(encoder, sample, batch_size)
        except (RuntimeError, ValueError, NotImplementedError) as error:
            # A candidate this machine cannot run (a missing kernel, out of memory) is skipped.
            probe[name] = {"error": f"{type(error).__name__}: {error}"[:300], "passed": False}
            continue
        finally:
            converted = encoder.model
            encoder.use_path("fp32", fp32_model)
        mean_cos, min_cos = fidelity(reference, vectors)
        speedup = fp32_s / seconds
        passed = mean_cos >= FIDELITY_MEAN and min_cos >= FIDELITY_MIN and speedup >= MIN_SPEEDUP
        probe[name] = {"seconds": seconds, "speedup": speedup, "mean_cosine": mean_cos,
                       "min_cosine": min_cos, "passed": passed}
        if passed:
            best = (name, converted)
    if best is None:
        return PathChoice("fp32", requested, f"fp32: no candidate ({', '.join(candidates)}) was at "
                          f"least {MIN_SPEEDUP}x faster on {len(sample)} texts within the fidelity "
                          f"bar (cosine mean >= {FIDELITY_MEAN}, min >= {FIDELITY_MIN})",
                          shown_flags, probe)
    name, converted = best
    encoder.use_path(name, converted)
    stats = probe[name]
    return PathChoice(name, requested, f"{name}: {why}; on {len(sample)} of these texts "
                      f"{stats['speedup']:.2f}x fp32, cosine to fp32 mean {stats['mean_cosine']:.5f}"
                      f" min {stats['min_cosine']:.5f}", shown_flags, probe)
