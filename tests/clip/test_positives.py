"""Multi-positive contrastive loss (`clip.positives`): same-text / same-label pairs as positives.

- with every group distinct the multi-positive loss is the paired (standard InfoNCE) loss;
- pairs sharing a group are positives of each other (targets normalized per row);
- GradCache and the DDP row/column decomposition give the full-batch gradient and loss with
  the positive mask built on the global batch; 2 gloo processes match 1 process;
- the option is validated, and same_labels without label keys fails clearly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from cxr_assets.clip.data import CachedPairDataset, StepBatches, resolve_groups
from cxr_assets.clip.gradcache import compute_gradients
from cxr_assets.clip.loss import contrastive_loss, group_ids, positive_mask
from cxr_assets.clip.model import ClipModelConfig, DualTowerClip
from cxr_assets.clip.train import train_clip
from cxr_assets.config import ClipParams, ParamsError, parse_params
from tests.clip._gradcheck import assert_micro_batches_match, grads

KINDS = ["infonce", "siglip", "reference"]
TEXT_DIM = 24


def _features(n: int = 12, d: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    return img, txt


@pytest.mark.parametrize("kind", KINDS)
def test_distinct_groups_equal_the_paired_loss(kind):
    img, txt = _features()
    scale, bias = torch.tensor(2.3, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
    paired = contrastive_loss(img, txt, img, txt, 0, scale, bias, kind)
    distinct = contrastive_loss(img, txt, img, txt, 0, scale, bias, kind, torch.arange(12) * 7)
    assert float(distinct) == pytest.approx(float(paired), rel=1e-12)
    # Row blocks (one process's rows against the gathered columns) too.
    for offset in (0, 4, 8):
        rows = slice(offset, offset + 4)
        a = contrastive_loss(img[rows], txt[rows], img, txt, offset, scale, bias, kind)
        b = contrastive_loss(img[rows], txt[rows], img, txt, offset, scale, bias, kind,
                             torch.arange(12))
        assert float(b) == pytest.approx(float(a), rel=1e-12)


def test_float32_paired_path_unchanged_by_distinct_groups():
    img, txt = (t.float() for t in _features())
    scale = torch.tensor(2.6592)
    assert torch.allclose(contrastive_loss(img, txt, img, txt, 0, scale),
                          contrastive_loss(img, txt, img, txt, 0, scale, groups=torch.arange(12)),
                          rtol=1e-6, atol=0)


def test_same_group_pairs_become_positives():
    img, txt = _features(4)
    scale = torch.tensor(1.5, dtype=torch.float64)
    # Pairs 0 and 1 share a group (identical report text, or identical labels).
    groups = group_ids(["a", "a", "b", "c"])
    assert groups.tolist() == [0, 0, 1, 2]
    mask = positive_mask(groups, 0, 4, 4)
    assert mask.tolist() == [[True, True, False, False], [True, True, False, False],
                             [False, False, True, False], [False, False, False, True]]

    got = contrastive_loss(img, txt, img, txt, 0, scale, groups=groups)
    s = scale.exp()
    log_i = torch.log_softmax(s * img @ txt.t(), dim=1)
    log_t = torch.log_softmax(s * txt @ img.t(), dim=1)
    # Rows 0 and 1 average -log p over both positives; rows 2 and 3 are plain InfoNCE rows.
    per_row_i = [-(log_i[0, 0] + log_i[0, 1]) / 2, -(log_i[1, 0] + log_i[1, 1]) / 2,
                 -log_i[2, 2], -log_i[3, 3]]
    per_row_t = [-(log_t[0, 0] + log_t[0, 1]) / 2, -(log_t[1, 0] + log_t[1, 1]) / 2,
                 -log_t[2, 2], -log_t[3, 3]]
    expected = 0.5 * (torch.stack(per_row_i).mean() + torch.stack(per_row_t).mean())
    assert float(got) == pytest.approx(float(expected), rel=1e-12)
    paired = contrastive_loss(img, txt, img, txt, 0, scale)
    assert float(got) != pytest.approx(float(paired), rel=1e-6)

    # Image 1 is no longer pushed away from report 0: the logit gradient of image 1 towards
    # report 0 is p - 1/2 (pulled) instead of p (pushed).
    logits = (s * img @ txt.t()).requires_grad_(True)
    multi = F.cross_entropy(logits, mask.double() / mask.double().sum(1, keepdim=True))
    (grad,) = torch.autograd.grad(multi, logits)
    assert grad[1, 0] < 0 and grad[0, 1] < 0 and grad[2, 0] > 0


@pytest.mark.parametrize("kind", ["infonce", "reference"])
def test_identical_text_features_leave_softmax_losses_unchanged(kind):
    """Word-for-word identical reports have identical cached embeddings, and then the
    per-row-normalized multi-positive cross entropy has the paired loss's value and gradient:
    an exact duplicate is no false negative for InfoNCE (it is for SigLIP). Different reports
    with the same findings (same_labels) are what the paired loss pushes apart."""
    img, txt = _features(6)
    txt[1] = txt[0]
    groups = torch.tensor([0, 0, 1, 2, 3, 4])
    scale = torch.tensor(1.5, dtype=torch.float64)
    paired = contrastive_loss(img, txt, img, txt, 0, scale, kind=kind)
    multi = contrastive_loss(img, txt, img, txt, 0, scale, kind=kind, groups=groups)
    assert float(multi) == pytest.approx(float(paired), rel=1e-12)
    sig = [contrastive_loss(img, txt, img, txt, 0, scale, -1.0, "siglip", g)
           for g in (None, groups)]
    assert float(sig[0]) != pytest.approx(float(sig[1]), rel=1e-6)


def test_siglip_labels_same_group_pairs_positive():
    img, txt = _features(3)
    scale, bias = torch.tensor(1.0, dtype=torch.float64), torch.tensor(-1.0, dtype=torch.float64)
    groups = torch.tensor([5, 5, 9])
    got = contrastive_loss(img, txt, img, txt, 0, scale, bias, "siglip", groups)
    logits = scale.exp() * img @ txt.t() + bias
    z = torch.tensor([[1, 1, -1], [1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    assert float(got) == pytest.approx(float(-F.logsigmoid(z * logits).sum() / 3), rel=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_local_losses_with_groups_average_to_global_loss(kind):
    img, txt = _features()
    scale, bias = torch.tensor(1.1, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    groups = torch.tensor([0, 1, 0, 2, 3, 3, 4, 1, 5, 6, 6, 6])
    full = contrastive_loss(img, txt, img, txt, 0, scale, bias, kind, groups)
    parts = [contrastive_loss(img[r * 4:(r + 1) * 4], txt[r * 4:(r + 1) * 4], img, txt, r * 4,
                              scale, bias, kind, groups) for r in range(3)]
    assert float(sum(parts) / 3) == pytest.approx(float(full), rel=1e-12)


def test_positive_mask_rejects_bad_groups():
    with pytest.raises(ValueError, match="one id per column of the global batch"):
        positive_mask(torch.arange(5), 0, 4, 4)
    with pytest.raises(ValueError, match="integer ids"):
        positive_mask(torch.zeros(4), 0, 4, 4)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcache_with_groups_equals_full_batch_gradient(kind):
    torch.manual_seed(0)
    config = ClipModelConfig("test_vit", 32, TEXT_DIM, 16, 2.0, 4.6, loss=kind, text_adapter="mlp")
    model = DualTowerClip(config).double().train()
    images = torch.randn(16, 1, 32, 32, dtype=torch.float64)
    texts = torch.randn(16, TEXT_DIM, dtype=torch.float64)
    # Groups spanning micro-batch boundaries (different reports with the same findings):
    # the mask must cover the whole batch.
    groups = torch.tensor([0, 1, 2, 0, 3, 4, 1, 5, 6, 0, 7, 8, 9, 9, 10, 2])

    model.zero_grad(set_to_none=True)
    full = compute_gradients(model, images, texts, micro_batch=None, groups=groups)
    reference = grads(model)
    # The multi-positive loss over one global batch, computed directly.
    with torch.no_grad():
        img_f, txt_f = model.loss_image(images), model.loss_text(texts)
        direct = contrastive_loss(img_f, txt_f, img_f, txt_f, 0, model.logit_scale,
                                  model.logit_bias_value(), kind, groups)
    assert full == pytest.approx(float(direct), rel=1e-12)
    assert_micro_batches_match(model, images, texts, full, reference, kind, groups=groups)
    # The groups change the gradient (the check is not vacuous).
    model.zero_grad(set_to_none=True)
    compute_gradients(model, images, texts, micro_batch=4)
    assert any(not torch.allclose(grads(model)[n], reference[n]) for n in reference)
    with pytest.raises(ValueError, match="groups must have shape"):
        compute_gradients(model, images, texts, micro_batch=4, groups=groups[:8])


# ------------------------------------------------------------------------- params and trainer


def test_positives_option_is_validated():
    assert ClipParams().positives == "paired"
    assert ClipParams(positives="same_labels").positives == "same_labels"
    with pytest.raises(ValueError, match="positives"):
        ClipParams(positives="same_study")
    with pytest.raises(ParamsError, match=r"clip\.positives: got 'bogus'.*'paired', 'same_text'"):
        parse_params({"clip": {"positives": "bogus"}}, "params.yaml")


def test_resolve_groups():
    emb = np.array([[1, 2], [3, 4], [1, 2], [5, 6]], dtype=np.float32)
    assert resolve_groups("train", "paired", ["x"] * 4, emb) is None
    assert resolve_groups("train", "same_text", None, emb).tolist() == [0, 1, 0, 2]
    assert resolve_groups("train", "same_text", None, ["a", "b", "b", "c"]).tolist() == [0, 1, 1, 2]
    keys = [("labels", ()), ("labels", (("Edema", 1.0),)), ("labels", ()), ("study", "s9")]
    assert resolve_groups("val", "same_labels", keys, emb).tolist() == [0, 1, 0, 2]
    with pytest.raises(ValueError, match="clip.positives=same_labels needs train_groups"):
        resolve_groups("train", "same_labels", None, emb)
    with pytest.raises(ValueError, match="val_groups has 3 keys but there are 4 val pairs"):
        resolve_groups("val", "same_text", ["a", "b", "c"], emb)
    with pytest.raises(ValueError, match="clip.positives must be one of"):
        resolve_groups("train", "same_study", None, emb)


def _tiny(png_factory):
    labels = np.arange(24) % 4
    paths = png_factory(labels, size=32)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, TEXT_DIM)).astype(np.float32)
    text = centres[labels]  # 4 distinct reports, each shared by 6 pairs
    return paths[:16], text[:16], paths[16:], text[16:], labels


def _params(**overrides) -> ClipParams:
    values = {"vision_backbone": "test_vit", "image_size": 32, "embed_dim": 16, "epochs": 2,
              "batch_size": 8, "lr": 3e-3, "warmup_steps": 1, "threads": 1, "device": "cpu"}
    return ClipParams(**(values | overrides))


def test_step_batches_carry_group_ids(png_factory):
    train_paths, train_text, _, _, labels = _tiny(png_factory)
    groups = torch.as_tensor(labels[:16])
    pairs = CachedPairDataset(train_paths, train_text, 32, groups)
    images, texts, got = StepBatches(pairs, 0, 8, 0, 1, 0, 2)[1]
    assert images.shape == (8, 1, 32, 32) and texts.shape == (8, TEXT_DIM)
    # The ids travel with their pairs: equal ids <=> equal report embeddings.
    same = got[:, None] == got[None, :]
    assert torch.equal(same, (texts[:, None] == texts[None, :]).all(-1))
    assert len(StepBatches(CachedPairDataset(train_paths, train_text, 32), 0, 8, 0, 1, 0, 2)[0]) == 2


def test_train_with_positives(png_factory):
    train_paths, train_text, val_paths, val_text, labels = _tiny(png_factory)
    base = train_clip(train_paths, train_text, val_paths, val_text, _params(), "h", 3, False)
    # paired ignores any groups given: the same run, bit for bit.
    ignored = train_clip(train_paths, train_text, val_paths, val_text, _params(), "h", 3, False,
                         train_groups=list(labels[:16]), val_groups=list(labels[16:]))
    for key, value in base.model.state_dict().items():
        assert torch.equal(ignored.model.state_dict()[key], value), key
    same_text = train_clip(train_paths, train_text, val_paths, val_text,
                           _params(positives="same_text"), "h", 3, False)
    assert len(same_text.history) == 2
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"])
               for r in same_text.history)
    same_labels = train_clip(train_paths, train_text, val_paths, val_text,
                             _params(positives="same_labels"), "h", 3, False,
                             train_groups=list(labels[:16] % 2), val_groups=list(labels[16:] % 2))
    assert any(not torch.equal(same_labels.model.state_dict()[k], v)
               for k, v in base.model.state_dict().items())
    # micro-batches (GradCache) run with groups too.
    train_clip(train_paths, train_text, val_paths, val_text,
               _params(positives="same_text", micro_batch_size=4, epochs=1), "h", 3, False)
    with pytest.raises(ValueError, match="same_labels needs train_groups"):
        train_clip(train_paths, train_text, val_paths, val_text,
                   _params(positives="same_labels"), "h", 3, False)


def test_positive_keys_from_catalog_tables(tmp_path):
    from cxr_assets.clip.pairs import positive_keys
    from cxr_assets.config import Params
    from cxr_assets.paths import ProjectPaths

    paths = ProjectPaths.from_params(Params(), tmp_path)
    paths.catalog_dir.mkdir(parents=True)
    pl.DataFrame({
        "study_id": ["s1", "s2", "s3", "s4"],
        "report_for_training": ["Normal chest.", "Normal chest.", "Small left effusion.", None],
    }).write_parquet(paths.report_texts_table)
    pl.DataFrame({
        "study_id": ["s1", "s2", "s3"],
        "No Finding": [1.0, 1.0, None],
        "Pleural Effusion": [0.0, None, 1.0],
        "Edema": [None, 0.0, -1.0],
    }).write_parquet(paths.labels_table)
    pairs = pl.DataFrame({"study_id": ["s3", "s1", "s1", "s2", "s4"]})  # s1: two views
    assert positive_keys(pairs, "paired", paths) is None
    text = resolve_groups("train", "same_text", positive_keys(pairs, "same_text", paths),
                          np.zeros((5, 2), np.float32))
    assert text.tolist() == [0, 1, 1, 1, 2]
    labels = positive_keys(pairs, "same_labels", paths)
    assert labels[0] == ("labels", (("Pleural Effusion", 1.0), ("Edema", -1.0)))
    assert labels[1] == labels[2] == labels[3] == ("labels", (("No Finding", 1.0),))
    assert labels[4] == ("study", "s4")


@pytest.mark.slow
def test_two_gloo_processes_with_positives_match_single_process(png_factory, tmp_path):
    from tests.clip.test_clip_scaling import _launch, _load

    train_paths, train_text, val_paths, val_text, labels = _tiny(png_factory)
    rng = np.random.default_rng(1)
    train_text = train_text + 0.2 * rng.normal(size=train_text.shape).astype(np.float32)
    # Label-set keys that are not the text identity: only the global mask gets them right.
    train_groups, val_groups = labels[:16] % 2, labels[16:] % 2
    file = tmp_path / "pairs.npz"
    np.savez(file, train_paths=[str(p) for p in train_paths], train_text=train_text,
             val_paths=[str(p) for p in val_paths], val_text=val_text,
             train_groups=train_groups, val_groups=val_groups)
    values = {"vision_backbone": "test_vit", "image_size": 32, "embed_dim": 16, "epochs": 3,
              "batch_size": 8, "lr": 3e-3, "warmup_steps": 1, "threads": 1, "device": "cpu",
              "positives": "same_labels"}
    single = train_clip(train_paths, train_text, val_paths, val_text, ClipParams(**values), "h",
                        5, False, train_groups=train_groups.tolist(),
                        val_groups=val_groups.tolist())
    paired = train_clip(train_paths, train_text, val_paths, val_text,
                        ClipParams(**(values | {"positives": "paired"})), "h", 5, False)
    for name, extra in (("ddp", {}), ("ddp_gradcache", {"micro_batch_size": 2})):
        out = tmp_path / f"{name}.safetensors"
        spec = {"pairs": str(file), "params": values | extra, "seed": 5, "out": str(out)}
        done = _launch(tmp_path, name, spec, nproc=2)
        assert done.returncode == 0, done.stderr[-3000:]
        got = _load(out)
        for key, value in single.model.state_dict().items():
            torch.testing.assert_close(got[key], value, rtol=1e-3, atol=1e-4, msg=f"{name}: {key}")
        assert any(not torch.allclose(got[k], v, rtol=1e-3, atol=1e-4)
                   for k, v in paired.model.state_dict().items() if v.is_floating_point())
        history = json.loads(Path(str(out) + ".json").read_text())["history"]
        for mine, theirs in zip(history, single.history, strict=True):
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
            assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4)
