"""Encode paths (cxr_assets/text/encode_paths.py) and length batching of TextEncoder.encode."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from cxr_assets.text import encode_paths
from cxr_assets.text.encode_paths import (
    _int8_linear,
    auto_candidates,
    choose_path,
    convert_model,
    cpu_flags,
    fidelity,
    int8_weight_levels,
)
from cxr_assets.text.encoder import TextEncoder, length_batches


def quantize_dynamic(*args, **kwargs):
    import warnings

    from torch.ao.quantization import quantize_dynamic as quantize

    with warnings.catch_warnings():  # torch.ao's deprecation notice
        warnings.simplefilter("ignore")
        return quantize(*args, **kwargs)


@pytest.fixture()
def encoder(tiny_dir: Path) -> TextEncoder:
    return TextEncoder.from_base(tiny_dir, pooling="mean", max_length=64)


def many_reports(reports: list[str], n: int) -> list[str]:
    """n distinct report texts of varied length."""
    return [f"{reports[i % len(reports)]} Study {i}." + " Unchanged." * (i % 5) for i in range(n)]


def test_length_batches_cover_every_index_once_within_both_limits() -> None:
    lengths = [5, 120, 7, 60, 60, 3, 200, 9, 11, 64]
    batches = length_batches(lengths, batch_size=4, max_tokens=256)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert flat[0] == 6  # longest first
    for batch in batches:
        assert len(batch) <= 4
        width = max(lengths[i] for i in batch)
        assert width * len(batch) <= 256 or len(batch) == 1  # a text over the budget goes alone
    # Without a token budget: fixed-count batches of the length-sorted order.
    assert [len(b) for b in length_batches(lengths, 4, None)] == [4, 4, 2]
    with pytest.raises(ValueError, match="max_batch_tokens"):
        length_batches(lengths, 4, 0)
    with pytest.raises(ValueError, match="batch_size"):
        length_batches(lengths, 0)


def test_token_budget_changes_batching_not_embeddings(encoder: TextEncoder, reports) -> None:
    texts = many_reports(reports, 24)
    fixed = encoder.encode(texts, batch_size=8, progress=False, max_batch_tokens=None)
    budget = encoder.encode(texts, batch_size=8, progress=False, max_batch_tokens=64)
    np.testing.assert_allclose(budget, fixed, rtol=1e-4, atol=1e-5)


def test_cpu_flags_and_candidates(tmp_path: Path, monkeypatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16\n")
    assert {"avx2", "avx512_bf16"} <= cpu_flags(info)
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert auto_candidates(frozenset({"avx2", "fma"}), cuda=False)[0] == ["openvino_fp32"]
    assert "native bf16" in auto_candidates(frozenset({"avx2"}), cuda=False)[1]
    assert auto_candidates(frozenset({"avx2", "avx512_bf16"}), cuda=False)[0] == [
        "openvino_bf16", "bf16_linear", "bf16"]
    assert auto_candidates(frozenset({"amx_bf16"}), cuda=False)[0][0] == "openvino_bf16"
    assert auto_candidates(frozenset(), cuda=True)[0] == ["cuda_bf16"]
    # Without OpenVINO installed: PyTorch's own paths only.
    monkeypatch.setattr(encode_paths, "openvino_available", lambda: False)
    assert auto_candidates(frozenset({"avx2", "fma"}), cuda=False)[0] == []
    assert auto_candidates(frozenset({"avx512_bf16"}), cuda=False)[0] == ["bf16_linear", "bf16"]


def test_an_isa_cap_removes_native_bf16_and_vnni(tmp_path: Path, monkeypatch) -> None:
    """ONEDNN_MAX_CPU_ISA=AVX2 (how the benchmark emulates an AVX2-only CPU) makes bf16 emulated
    and int8 products saturate beyond 7-bit weights: the flags and weight levels follow it."""
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: avx2 avx512f avx512_vnni avx512_bf16\n")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert "avx512_bf16" in cpu_flags(info)
    assert int8_weight_levels(cpu_flags(info)) == 127
    assert int8_weight_levels(frozenset({"avx2", "fma"})) == 63
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert "avx512_bf16" not in cpu_flags(info) and "avx2" in cpu_flags(info)
    assert int8_weight_levels(cpu_flags(info)) == 63
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert "avx512_bf16" in cpu_flags(info) and int8_weight_levels(cpu_flags(info)) == 127


def test_int8_linear_scales_each_token_apart() -> None:
    """A massive-activation token (SmolLM2 has them) must not crush the other tokens' precision,
    as one scale per tensor (int8_dynamic) does."""
    import torch

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64)
    x[0] *= 1e4  # one massive token
    with torch.no_grad():
        reference = linear(x)
        for levels in (127, 63):
            out = _int8_linear(linear, levels)(x)
            assert out.shape == reference.shape and out.dtype == reference.dtype
            error = (out - reference).norm(dim=1) / reference.norm(dim=1)
            assert float(error.max()) < (0.02 if levels == 127 else 0.04)
        per_tensor = quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear},
                                      dtype=torch.qint8)(x)
    assert float(((per_tensor - reference).norm(dim=1) / reference.norm(dim=1))[1:].max()) > 0.1


def test_smoothing_keeps_the_function_and_flattens_the_activations(encoder: TextEncoder,
                                                                     reports) -> None:
    import copy

    import torch

    from cxr_assets.text.encode_paths import _activation_maxima, smooth_activations

    # Give one input channel of every q/k/v an outlier: smoothing must move it into the weights.
    model = copy.deepcopy(encoder.model)
    for layer in model.layers:
        with torch.no_grad():
            layer.input_layernorm.weight[3] *= 50.0
    batch = encoder.tokenizer(reports[:4], padding=True, return_tensors="pt")
    with torch.inference_mode():
        before = model(**batch).last_hidden_state
    maxima = _activation_maxima(model, encoder.tokenizer, reports, 64)
    q_proj = model.layers[0].self_attn.q_proj
    spread_before = float(maxima[q_proj].max() / maxima[q_proj].median())
    assert spread_before > 10
    smoothed = smooth_activations(model, maxima)
    with torch.inference_mode():
        after = smoothed(**batch).last_hidden_state
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    after_maxima = _activation_maxima(smoothed, encoder.tokenizer, reports, 64)
    assert float(after_maxima[q_proj].max() / after_maxima[q_proj].median()) < spread_before / 3


def test_int8_smooth_needs_a_tokenizer_and_a_llama_style_decoder(encoder: TextEncoder) -> None:
    import torch

    with pytest.raises(ValueError, match="tokenizer"):
        convert_model(encoder.model, "int8_smooth")
    with pytest.raises(ValueError, match="Llama-style decoder"):
        convert_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), "int8_smooth",
                      encoder.tokenizer)


def test_fidelity_is_the_cosine_of_matching_rows() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[2.0, 0.0], [1.0, 1.0]])
    mean_cos, min_cos = fidelity(a, b)
    assert min_cos == pytest.approx(2 ** -0.5)
    assert mean_cos == pytest.approx((1 + 2 ** -0.5) / 2)


@pytest.mark.parametrize("path", ["openvino_fp32", "int8_smooth", "bf16_linear", "bf16",
                                  "bf16_autocast", "int8_dynamic"])
def test_forced_paths_run_and_stay_close_to_fp32(encoder: TextEncoder, reports, path: str) -> None:
    reference = encoder.encode(reports, progress=False)
    choice = choose_path(encoder, reports, path)
    assert (choice.path, encoder.compute.name) == (path, path)
    assert "forced" in choice.reason
    vectors = encoder.encode(reports, progress=False)
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    # A tiny random model has no activation outliers: every path stays near fp32 on it.
    # openvino_fp32 is fp32 arithmetic: equal up to summation order, padding included
    # (`reports` batches texts of different lengths, so rows are left-padded).
    bar = {"openvino_fp32": 0.99999, "int8_smooth": 0.95, "int8_dynamic": 0.95}.get(path, 0.99)
    assert fidelity(reference, vectors)[1] > bar
    if path == "int8_smooth":  # q/k/gate/up became int8 layers; v/o/down did not
        kinds = {name.rsplit(".", 1)[-1]: type(m).__name__ for name, m in
                 encoder.model.named_modules() if name.endswith("_proj")}
        assert {kinds[n] for n in ("q_proj", "k_proj", "gate_proj", "up_proj")} == {"Int8Linear"}
        assert "Int8Linear" not in {kinds[n] for n in ("v_proj", "o_proj", "down_proj")}
    with pytest.raises(ValueError, match="already runs path"):
        choose_path(encoder, reports, "bf16")


def test_openvino_fp32_equals_fp32_on_left_padded_causal_batches(tiny_dir: Path, reports) -> None:
    """The released encoders are causal: a left-padded row's padding attends to nothing, which
    OpenVINO's softmax turns into NaN that then reaches the real tokens. The OpenVINO body must
    hand it right-padded rows and still return what PyTorch's fp32 forward does. With two
    threads each batch is cut into two parts (one per OpenVINO stream), each trimmed to its own
    longest row, and put back together in the caller's order."""
    import torch

    encoder = TextEncoder.from_base(tiny_dir, pooling="mean", max_length=64, bidirectional=False)
    texts = [reports[0], "Effusion.", *reports[1:]]  # lengths differ within every batch
    reference = encoder.encode(texts, batch_size=4, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        choose_path(encoder, texts, "openvino_fp32")
    finally:
        torch.set_num_threads(threads)
    assert len(encoder.model.requests) == 2
    vectors = encoder.encode(texts, batch_size=4, progress=False)
    assert np.isfinite(vectors).all()
    assert fidelity(reference, vectors)[1] > 0.99999


def test_an_openvino_body_is_freed_with_its_encoder(tiny_dir: Path, reports) -> None:
    """The compiled model (its buffers and stream threads) goes when the encoder does, by
    reference counting alone, not at whatever later garbage collection (in another test, or in
    another stage of a long run) first reaches a reference cycle holding it."""
    import gc
    import weakref

    encoder = TextEncoder.from_base(tiny_dir, pooling="mean", max_length=64)
    choose_path(encoder, reports, "openvino_fp32")
    assert encoder.encode(reports[:2], progress=False).shape[0] == 2
    compiled = weakref.ref(encoder.model.compiled)
    gc.collect()
    gc.disable()
    try:
        del encoder
        assert compiled() is None, "the compiled OpenVINO model outlived its encoder"
    finally:
        gc.enable()


def test_non_finite_embeddings_are_refused_with_the_path_and_text(encoder: TextEncoder,
                                                                  reports) -> None:
    """A path whose kernels produce NaN on this CPU must stop the stage, not fill the table."""
    import torch

    with torch.no_grad():
        encoder.model.norm.weight[0] = float("nan")
    with pytest.raises(RuntimeError, match=r"encode path 'fp32' produced non-finite embeddings "
                                           r"for 3 of 3 texts \(first: texts\[0\]"):
        encoder.encode(reports[:3], progress=False)


def test_unknown_or_unavailable_paths_are_refused(encoder: TextEncoder, reports) -> None:
    with pytest.raises(ValueError, match="encode_path must be one of"):
        choose_path(encoder, reports, "fp8")
    with pytest.raises(ValueError, match="encode path must be one of"):
        encoder.request_path("int4")
    with pytest.raises(ValueError, match="encode path must be one of"):
        convert_model(encoder.model, "fp16")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            choose_path(encoder, reports, "cuda_bf16")


def test_auto_without_native_bf16_or_openvino_stays_fp32(encoder: TextEncoder, reports,
                                                         monkeypatch) -> None:
    monkeypatch.setattr(encode_paths, "cpu_flags", lambda: frozenset({"avx", "avx2", "fma"}))
    monkeypatch.setattr(encode_paths, "openvino_available", lambda: False)
    choice = choose_path(encoder, many_reports(reports, 300), "auto")
    assert choice.path == "fp32" and encoder.compute.name == "fp32"
    assert "no native bf16" in choice.reason and choice.probe == {}


def test_auto_on_avx2_probes_openvino_fp32(encoder: TextEncoder, reports, monkeypatch) -> None:
    monkeypatch.setattr(encode_paths, "cpu_flags", lambda: frozenset({"avx", "avx2", "fma"}))
    monkeypatch.setattr(encode_paths, "PROBE_TEXTS", 16)
    choice = choose_path(encoder, many_reports(reports, 300), "auto")
    assert list(choice.probe) == ["fp32", "openvino_fp32"]
    stats = choice.probe["openvino_fp32"]
    assert stats["min_cosine"] > 0.99999  # fp32 arithmetic: only the speed decides
    assert stats["passed"] == (stats["speedup"] >= encode_paths.MIN_SPEEDUP)
    assert encoder.compute.name == choice.path == ("openvino_fp32" if stats["passed"] else "fp32")


def test_auto_probes_on_a_native_bf16_cpu(encoder: TextEncoder, reports, monkeypatch) -> None:
    """The probe times every candidate against fp32 and keeps one only within the bar."""
    monkeypatch.setattr(encode_paths, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    monkeypatch.setattr(encode_paths, "PROBE_TEXTS", 16)
    texts = many_reports(reports, 300)
    few = choose_path(TextEncoder.from_base(encoder.base_model, max_length=64), texts[:20], "auto")
    assert few.path == "fp32" and "only 20 texts" in few.reason
    reference = encoder.encode(texts[:16], progress=False)
    choice = choose_path(encoder, texts, "auto")
    # Candidates are probed best first until one passes.
    assert list(choice.probe)[:2] == ["fp32", "openvino_bf16"]
    order = ["fp32", "openvino_bf16", "bf16_linear", "bf16"]
    assert list(choice.probe) == order[:len(choice.probe)]
    for earlier, later in itertools.pairwise(order[1:]):
        if earlier in choice.probe and choice.probe[earlier]["passed"]:
            assert later not in choice.probe
    for name in set(choice.probe) - {"fp32"}:
        stats = choice.probe[name]
        expected = (stats["mean_cosine"] >= 0.999 and stats["min_cosine"] >= 0.99
                    and stats["speedup"] >= encode_paths.MIN_SPEEDUP)
        assert stats["passed"] == expected
    assert encoder.compute.name == choice.path
    if choice.path == "fp32":
        assert "no candidate" in choice.reason
        np.testing.assert_allclose(encoder.encode(texts[:16], progress=False), reference,
                                   rtol=1e-5, atol=1e-6)
    else:
        assert choice.probe[choice.path]["passed"] and "x fp32" in choice.reason


def test_request_path_chooses_at_the_first_encode(encoder: TextEncoder, reports) -> None:
    encoder.request_path("bf16_autocast")
    assert encoder.path_choice is None and encoder.compute.name == "fp32"
    encoder.encode(reports, progress=False)
    assert encoder.path_choice.path == "bf16_autocast" == encoder.compute.name
    metadata = encoder.path_choice.as_metadata()
    assert metadata["requested"] == "bf16_autocast" and "forced" in metadata["reason"]


def test_a_candidate_that_cannot_run_is_skipped(encoder: TextEncoder, reports, monkeypatch) -> None:
    monkeypatch.setattr(encode_paths, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    monkeypatch.setattr(encode_paths, "PROBE_TEXTS", 16)
    real = encode_paths.convert_model

    def convert(model, name, *args):
        if name == "openvino_bf16":
            raise RuntimeError("no bf16 kernel for this layer")
        return real(model, name, *args)

    monkeypatch.setattr(encode_paths, "convert_model", convert)
    choice = choose_path(encoder, many_reports(reports, 300), "auto")
    assert choice.probe["openvino_bf16"] == {
        "error": "RuntimeError: no bf16 kernel for this layer", "passed": False}
    assert "bf16_linear" in choice.probe  # the next candidate was still probed
    assert encoder.compute.name == choice.path in ("bf16_linear", "bf16", "fp32")


def test_openvino_exports_the_layers_a_mean_tap_reads(tiny_dir: Path, reports) -> None:
    """An encoder whose mean reads other layers than the last (pooling.MeanTaps) gets those hidden
    states from the exported body too, in the caller's row order, as PyTorch computes them."""
    from cxr_assets.text.pooling import MeanTaps

    encoder = TextEncoder.from_base(tiny_dir, pooling="mean", max_length=64, bidirectional=False,
                                    mean_taps=MeanTaps((1, -1), skip_first_token=True))
    texts = [reports[0], "Effusion.", *reports[1:]]
    reference = encoder.encode(texts, batch_size=4, progress=False)
    assert reference.shape[1] == 2 * encoder.hidden_size
    choose_path(encoder, texts, "openvino_fp32")
    vectors = encoder.encode(texts, batch_size=4, progress=False)
    half = encoder.hidden_size
    for part in (slice(0, half), slice(half, None)):  # each layer's mean on its own
        assert fidelity(reference[:, part], vectors[:, part])[1] > 0.99999
