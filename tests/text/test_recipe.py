"""The corrected LLM2Vec recipe on the tiny model: post-processing, symmetric and distillation
losses, the schedule, resume after a kill, causal vs bidirectional, and the release folder."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_assets.config import TextEncoderParams
from cxr_assets.text.adapt import adapt_text_encoder
from cxr_assets.text.contrastive import contrastive_loss, distillation_loss
from cxr_assets.text.encoder import TextEncoder
from cxr_assets.text.evaluation import AucItems, paired_bootstrap, unseen_corruptions
from cxr_assets.text.mntp import lr_at
from cxr_assets.text.postprocess import EmbeddingPostprocess


def _params(tiny_dir: Path, **over) -> TextEncoderParams:
    base = {"base_model": str(tiny_dir), "max_length": 48, "pooling": "mean",
            "mntp": {"steps": 4, "batch_size": 4, "eval_batch_size": 2},
            "contrastive": {"steps": 4, "batch_size": 4, "warmup_steps": 1},
            "postprocess": {"n_fit": 8}, "checkpoint": {"every_n_steps": 1}}
    base.update(over)
    return TextEncoderParams(**base)


def test_postprocess_centres_scales_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32) * [1, 1, 1, 1, 1, 50] + [0, 0, 0, 0, 0, 300]
    pp = EmbeddingPostprocess.fit(x)
    y = pp(x)
    assert np.allclose(y.mean(0), 0, atol=1e-2) and np.allclose(y.std(0), 1, atol=1e-2)
    pp.save(tmp_path / "pp.safetensors")
    again = EmbeddingPostprocess.load(tmp_path / "pp.safetensors")
    assert np.array_equal(again(x), y) and again.method == "center_scale" and again.n_fit == 200
    # Same statistics, same bytes (so the same content hash): safetensors writes a metadata map
    # in a random key order, which made one resumed run in two hash differently.
    copies = {(pp.save(tmp_path / f"pp{i}.safetensors"),
               (tmp_path / f"pp{i}.safetensors").read_bytes())[1] for i in range(12)}
    assert len(copies) == 1
    # The outlier dimension dominated every cosine before; not after.
    def mean_cosine(a: np.ndarray) -> float:
        unit = a / np.linalg.norm(a, axis=1, keepdims=True)
        return float((unit @ unit.T).mean())

    assert mean_cosine(x) > 0.9 and abs(mean_cosine(y)) < 0.2
    with pytest.raises(ValueError, match="dim 6"):
        pp(np.ones((2, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="at least 2"):
        EmbeddingPostprocess.fit(x[:1])


def test_symmetric_loss_adds_the_positive_to_query_direction() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # positives then one hard negative
    none = torch.zeros(2, 3, dtype=torch.bool)
    forward = contrastive_loss(q, c, 20.0, none)
    both = contrastive_loss(q, c, 20.0, none, symmetric=True)
    # positive -> queries: row 0 [20, 0] (target 0), row 1 [20, 0] (target 1)
    back = torch.nn.functional.cross_entropy(torch.tensor([[20.0, 0.0], [20.0, 0.0]]),
                                             torch.tensor([0, 1]))
    assert both.item() == pytest.approx(0.5 * (forward.item() + back.item()), rel=1e-5)


def test_distillation_is_zero_for_the_teacher_itself_and_positive_otherwise() -> None:
    torch.manual_seed(0)
    q, c = torch.randn(4, 8), torch.randn(6, 8)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    assert distillation_loss(q, c, q, c, 20.0, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(q, c, torch.randn(4, 8), torch.randn(6, 8), 20.0, mask).item() > 0.01


def test_warmup_then_cosine_schedule() -> None:
    lrs = [lr_at(s, 10, 1.0, 2) for s in range(10)]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0) and all(a >= b for a, b in itertools.pairwise(lrs[2:]))
    assert lrs[-1] < 0.05


def test_unseen_corruptions_change_severity_and_location() -> None:
    out = unseen_corruptions("Small left upper lobe opacity.", seed=0)
    assert out["severity_change"] == "Large left upper lobe opacity."
    assert out["location_change"] == "Small left lower lobe opacity."
    assert unseen_corruptions("No acute disease.", seed=0) == {}


def test_paired_bootstrap_interval() -> None:
    rng = np.random.default_rng(1)
    a = (rng.random(300) < 0.8).astype(float)
    diff, low, high = paired_bootstrap(a, a, 200)
    assert diff == low == high == 0.0
    b = (rng.random(300) < 0.5).astype(float)
    diff, low, high = paired_bootstrap(a, b, 200)
    assert low > 0.15 and low < diff < high
    y = np.array([0, 1] * 50, dtype=float)
    good, bad = AucItems([(y + rng.normal(0, 0.3, 100), y)]), AucItems([(rng.normal(size=100), y)])
    diff, low, _ = paired_bootstrap(good, bad, 200)
    assert diff > 0.3 and low > 0.2


def test_adapt_resumes_after_a_kill_to_the_same_encoder(tiny_dir: Path, reports,
                                                        tmp_path: Path) -> None:
    params = _params(tiny_dir)
    pairs = [(r, r.lower()) for r in reports]
    whole = adapt_text_encoder(reports, pairs, params, tmp_path / "cache", tmp_path / "whole",
                               seed=3, progress=False)
    assert whole.mntp_eval_loss is not None and len(whole.contrastive_losses) == 4

    class Killed(Exception):
        pass

    def kill_at(stage: str, step: int, loss: float) -> None:
        if (stage, step) == ("contrastive", 2):
            raise Killed

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Killed):
        adapt_text_encoder(reports, pairs, params, tmp_path / "cache", tmp_path / "resumed",
                           seed=3, progress=False, log_fn=kill_at, checkpoint_dir=ckpt)
    assert (ckpt / "state.pt").is_file() and not (tmp_path / "resumed").exists()
    steps: list[tuple[str, int]] = []
    resumed = adapt_text_encoder(reports, pairs, params, tmp_path / "cache", tmp_path / "resumed",
                                 seed=3, progress=False, checkpoint_dir=ckpt,
                                 log_fn=lambda stage, step, loss: steps.append((stage, step)))
    assert resumed.resumed_from == "contrastive step 2"
    assert steps == [("contrastive", 2), ("contrastive", 3)]  # MNTP and 2 steps were not redone
    assert resumed.content_hash == whole.content_hash
    assert resumed.contrastive_losses == pytest.approx(whole.contrastive_losses)
    assert not ckpt.exists()  # cleared after success
    # Another seed does not pick up a foreign checkpoint.
    with pytest.raises(Killed):
        adapt_text_encoder(reports, pairs, params, tmp_path / "cache", tmp_path / "x", seed=3,
                           progress=False, log_fn=kill_at, checkpoint_dir=ckpt)
    other = adapt_text_encoder(reports, pairs, params, tmp_path / "cache", tmp_path / "x", seed=4,
                               progress=False, checkpoint_dir=ckpt)
    assert other.resumed_from is None


def test_release_reloads_to_the_same_embeddings_and_can_be_started_from(
        tiny_dir: Path, reports, tmp_path: Path) -> None:
    params = _params(tiny_dir, contrastive={"steps": 3, "batch_size": 4, "distill_weight": 0.0})
    pairs = [(r, r.lower()) for r in reports]
    result = adapt_text_encoder(reports, pairs, params, tmp_path / "cache", tmp_path / "enc",
                                seed=1, progress=False, release_dir=tmp_path / "release")
    release = tmp_path / "release"
    config = json.loads((release / "encoder_config.json").read_text())
    assert config["format"] == "release" and config["adapters"] == ["01_mntp", "02_contrastive"]
    assert not list(release.glob("model*.safetensors"))  # no base weights in a release
    adapter = json.loads((release / "adapters/01_mntp/adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_dir)  # the spec, as configured
    full = TextEncoder.from_pretrained(result.encoder_dir)
    rebuilt = TextEncoder.from_pretrained(release)
    assert rebuilt.postprocess is not None and rebuilt.bidirectional
    a, b = full.encode(reports, progress=False), rebuilt.encode(reports, progress=False)
    assert np.allclose(a, b, atol=1e-4)
    # Post-processing is applied by default: centred on the training reports.
    assert abs(float(a.mean())) < 0.5 and not np.allclose(
        a, full.encode(reports, progress=False, postprocess=False), atol=1e-2)

    start = _params(tiny_dir, init_from=str(release), mntp={"steps": 0},
                    contrastive={"steps": 0})
    same = adapt_text_encoder(reports, pairs, start, tmp_path / "cache", tmp_path / "enc2", seed=1,
                              progress=False)
    assert np.allclose(TextEncoder.from_pretrained(same.encoder_dir).encode(
        reports, progress=False, postprocess=False),
        full.encode(reports, progress=False, postprocess=False), atol=1e-4)
    with pytest.raises(FileNotFoundError, match="not a release folder"):
        adapt_text_encoder(reports, pairs, _params(tiny_dir, init_from=str(tmp_path)),
                           tmp_path / "cache", tmp_path / "enc3", seed=1, progress=False)


def test_causal_switch_and_reload_keep_the_attention_kind(tiny_dir: Path, reports,
                                                          tmp_path: Path) -> None:
    from cxr_assets.text.bidirectional import is_bidirectional

    causal = adapt_text_encoder(reports, [(r, r.lower()) for r in reports],
                                _params(tiny_dir, bidirectional=False, mntp={"steps": 0}),
                                tmp_path / "cache", tmp_path / "causal", seed=1, progress=False)
    loaded = TextEncoder.from_pretrained(causal.encoder_dir)
    assert not loaded.bidirectional and not is_bidirectional(loaded.model, loaded.tokenizer)
    bidir = TextEncoder.from_base(tiny_dir)
    assert is_bidirectional(bidir.model, bidir.tokenizer)
    raw = TextEncoder.from_base(tiny_dir, bidirectional=False)
    assert not is_bidirectional(raw.model, raw.tokenizer)
    # An adapted bidirectional encoder is bidirectional again after from_pretrained, and so is the
    # online LoRA CLIP tower built on it (and the encoder it merges back into).
    from cxr_assets.clip.text_tower import OnlineTextTower
    from cxr_assets.config import ClipTextLoraParams

    adapted = adapt_text_encoder(reports, [(r, r.lower()) for r in reports],
                                 _params(tiny_dir, bidirectional=True, mntp={"steps": 0}),
                                 tmp_path / "cache", tmp_path / "bidir", seed=1, progress=False)
    reloaded = TextEncoder.from_pretrained(adapted.encoder_dir)
    assert reloaded.bidirectional and is_bidirectional(reloaded.model, reloaded.tokenizer)
    tower = OnlineTextTower.from_folder(adapted.encoder_dir, ClipTextLoraParams(r=4))
    assert is_bidirectional(tower.body, reloaded.tokenizer)
    merged = tower.merged_encoder()
    assert merged.bidirectional and is_bidirectional(merged.model, merged.tokenizer)
    causal_tower = OnlineTextTower.from_folder(causal.encoder_dir, ClipTextLoraParams(r=4))
    assert not is_bidirectional(causal_tower.body, loaded.tokenizer)


def test_online_clip_tower_embeds_as_encode_does(tiny_dir: Path, reports, tmp_path: Path) -> None:
    from cxr_assets.clip.text_tower import OnlineTextTower

    result = adapt_text_encoder(reports, [(r, r.lower()) for r in reports],
                                _params(tiny_dir, bidirectional=False, mntp={"steps": 0},
                                        contrastive={"steps": 1, "batch_size": 4}),
                                tmp_path / "cache", tmp_path / "enc", seed=1, progress=False)
    encoder = TextEncoder.from_pretrained(result.encoder_dir)
    tower = OnlineTextTower(encoder).eval()
    with torch.no_grad():
        online = tower(tower.tokenize(reports[:3])).numpy()
    assert np.allclose(online, encoder.encode(reports[:3], progress=False), atol=1e-4)
    merged = tower.merged_encoder()
    assert not merged.bidirectional and merged.postprocess is encoder.postprocess

    # The release's layout: a mean read at two layers without the first token beside a head.
    from cxr_assets.text.pooling import MeanTaps, make_latent_attention
    from cxr_assets.text.postprocess import EmbeddingPostprocess

    tapped = TextEncoder(encoder.model, encoder.tokenizer, "mean_and_latent_attention",
                         max_length=encoder.max_length, bidirectional=False,
                         pooling_head=make_latent_attention(encoder.hidden_size, 4, 4),
                         mean_taps=MeanTaps((1, -1), skip_first_token=True), mean_weight=0.3)
    raw = tapped.encode(reports, progress=False, postprocess=False)
    tapped.postprocess = EmbeddingPostprocess.fit(raw[:, :tapped.mean_width], "center_scale")
    tower = OnlineTextTower(tapped).eval()
    with torch.no_grad():
        online = tower(tower.tokenize(reports[:3])).numpy()
    assert online.shape == (3, 3 * tapped.hidden_size)
    assert np.allclose(online, tapped.encode(reports[:3], progress=False), atol=1e-4)


def test_finding_statements_follow_the_labeler_and_differ_from_the_zero_shot_prompts() -> None:
    from cxr_assets.text.statements import finding_statement_pairs

    reports = ["Large right pleural effusion. No pneumothorax.", "Heart size normal.",
               "Possible pneumonia.", "Comparison: none."]
    pairs, negatives, tasks = finding_statement_pairs(reports, seed=0)
    # Report 0: effusion asserted, pneumothorax denied; report 1: cardiomegaly denied; report 2's
    # only mention is uncertain and report 3 mentions nothing: no pair.
    assert [p[0] for p in pairs] == [reports[0], reports[0], reports[1]]
    assert tasks == ["finding_statement"] * 3
    assert "cardiomegaly" in pairs[2][1].lower() and "cardiomegaly" in negatives[2].lower()
    by_finding = {("effusion" in p[1].lower()): (p[1], n) for p, n in zip(pairs[:2], negatives)}
    effusion, negated_effusion = by_finding[True]
    pneumothorax, asserted_pneumothorax = by_finding[False]
    assert "pleural effusion" in effusion.lower() and not effusion.lower().startswith("no")
    assert negated_effusion.lower().startswith(("no ", "negative")) or "not" in negated_effusion \
        or "absent" in negated_effusion
    assert any(w in pneumothorax.lower() for w in ("no ", "not", "absent", "negative"))
    assert not any(w in asserted_pneumothorax.lower() for w in ("no ", "not", "absent", "negative"))
    for text in [p[1] for p in pairs] + negatives:
        assert not text.startswith("There is")  # the zero-shot prompts are never trained on
    assert finding_statement_pairs(reports, seed=0) == (pairs, negatives, tasks)


def test_report_words_statements_use_the_reports_own_phrase_and_read_back_as_their_label() -> None:
    import pytest

    from cxr_assets.text.statements import finding_statement_pairs, mention_phrase, statement_fact

    def phrase(clause: str, words: str) -> str:
        start = clause.index(words)
        return mention_phrase(clause, start, start + len(words))

    assert phrase("There is a small right pleural effusion", "effusion") == \
        "small right pleural effusion"
    assert phrase("No definite focal consolidation", "consolidation") == \
        "definite focal consolidation"
    assert phrase("Unchanged (4 mm) nodule", "nodule") == "nodule"  # numbers end the modifiers
    reports = ["Right upper lobe nodule. No pneumothorax.", "Old healed left rib fractures.",
               "Cardiomegaly.", "Possible pneumonia."]
    own, own_negatives, _ = finding_statement_pairs(reports, seed=0, phrasing="report_words")
    statements = {p[1].rstrip(".").lower().split(" is ")[0] for p in own}
    # Report 0: its own nodule phrase and its denial; report 1: the fracture with its modifiers;
    # report 2: the words equal the observation's name (only the 'observation' phrasing has it);
    # report 3: uncertain, no statement.
    assert any("right upper lobe nodule" in s for s in statements)
    assert any("old healed left rib fracture" in s for s in statements)
    assert not any("cardiomegaly" in s for s in statements)
    for (report, text), negative in zip(own, own_negatives):
        fact = statement_fact(text)
        assert fact is not None and statement_fact(negative) == (fact[0], not fact[1])
    named, _, _ = finding_statement_pairs(reports, seed=0, phrasing="observation")
    both, _, _ = finding_statement_pairs(reports, seed=0, phrasing="both")
    assert set(both) == set(named) | set(own) and len(both) == len(named) + len(own)
    with pytest.raises(ValueError, match="phrasing 'synonyms'"):
        finding_statement_pairs(reports, seed=0, phrasing="synonyms")


def test_report_words_statement_that_reads_back_otherwise_is_dropped(monkeypatch) -> None:
    from cxr_assets.text import statements

    report = ["Large right pleural effusion."]
    assert statements.finding_statement_pairs(report, seed=0, phrasing="report_words")[0]
    # A phrase the labeler reads as uncertain (or as another finding) would teach a wrong fact.
    monkeypatch.setattr(statements, "mention_phrase", lambda *_: "possible pleural effusion")
    assert statements.finding_statement_pairs(report, seed=0, phrasing="report_words")[0] == []


def test_normal_statements_put_reports_without_any_mention_into_statement_batches() -> None:
    from cxr_assets.text.statements import finding_statement_pairs, label_aware_mask, statement_fact

    reports = ["No active disease.", "Large right pleural effusion.", "Possible pneumonia."]
    plain, _, _ = finding_statement_pairs(reports, seed=0)
    assert [p[0] for p in plain] == [reports[1]]  # a report that mentions nothing had no pair
    pairs, negatives, _ = finding_statement_pairs(reports, seed=0, normal=True)
    normal = [(p[1], n) for p, n in zip(pairs, negatives) if p[0] == reports[0]]
    assert len(normal) == 1 and [p[0] for p in pairs].count(reports[2]) == 0  # uncertain: none
    said, opposite = normal[0]
    assert statement_fact(said) == ("No Finding", True)
    assert statement_fact(opposite) == ("No Finding", False)
    # The normal statement is a negative of the effusion report and vice versa; the abnormal
    # statement may be true of the effusion report (hidden), never of the normal one.
    effusion = next(p[1] for p in pairs if p[0] == reports[1])
    mask = label_aware_mask(reports[:2], [said, effusion, opposite]).tolist()
    assert mask == [[False, False, False], [False, False, True]]


def test_label_aware_mask_hides_only_statements_the_labeler_does_not_rule_out() -> None:
    from cxr_assets.text.statements import (
        label_aware_mask,
        parse_statement,
        statement,
        statement_fact,
    )

    reports = ["Large right pleural effusion. No pneumothorax.",   # effusion +, pneumothorax -
               "Heart size normal. Lungs are clear.",               # cardiomegaly -, effusion blank
               "Moderate cardiomegaly. Possible effusion."]         # cardiomegaly +, effusion ?
    statements = [statement("Pleural Effusion", True, 0),          # own statement of report 0
                  statement("Cardiomegaly", False, 1),              # report 1's
                  statement("Cardiomegaly", True, 2)]               # report 2's
    negatives = [statement("Pleural Effusion", False, 0), statement("Cardiomegaly", True, 1),
                 statement("Cardiomegaly", False, 2)]
    assert parse_statement(statements[1]) == ("Cardiomegaly", False)
    assert parse_statement("There is cardiomegaly.") is None  # the zero-shot prompt is no statement
    # A report-words statement has no template: the mask reads its fact with the labeler.
    assert statement_fact("Small left pleural effusion is seen.") == ("Pleural Effusion", True)
    assert statement_fact("Comparison: none.") is None
    mask = label_aware_mask(reports, statements + negatives).tolist()
    # Report 0 says nothing of the heart: "No cardiomegaly." may be true of it (hidden, twice),
    # while the assertions of cardiomegaly are ruled out (negatives it must rank below its own).
    assert mask[0] == [False, True, False, False, False, True]
    # Report 1 omits effusion, so "Pleural effusion." is a negative; "No pleural effusion." is not.
    assert mask[1] == [False, False, False, True, False, True]
    # Report 2: its uncertain effusion rules out neither polarity; it asserts cardiomegaly.
    assert mask[2] == [True, False, False, True, True, False]
    # The own statement (the target) is never hidden, and the own hard negative stays visible.
    assert not any(mask[i][i] for i in range(3)) and not mask[0][3] and not mask[1][4]


def test_own_pair_mask_leaves_only_the_positive_and_its_hard_negative() -> None:
    from cxr_assets.text.contrastive import own_pair_mask

    mask = own_pair_mask([True, False, True])
    # candidates: 3 positives, then the hard negatives of queries 0 and 2
    assert (~mask).nonzero().tolist() == [[0, 0], [0, 3], [1, 1], [2, 2], [2, 4]]
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c = torch.cat([q, torch.tensor([[-1.0, 0.0], [-1.0, -1.0]])])
    # Each query's positive is itself, its hard negative opposite: loss ~ 0 for any in-batch rest.
    assert contrastive_loss(q, c, 20.0, mask, symmetric=True).item() < 1e-6


def test_head_stage_fits_a_head_on_a_released_body_and_releases_it(
        tiny_dir: Path, reports, tmp_path: Path) -> None:
    """Stage three (v3's recipe): a mean-pooled release's body, a latent-attention head trained
    alone on cached token states; its loss falls, the body is unchanged, the release reloads."""
    from cxr_assets.text.head_training import TokenStates

    pairs = [(r, r.lower()) for r in reports]
    first = adapt_text_encoder(reports, pairs, _params(tiny_dir, mntp={"steps": 0},
                                                       contrastive={"steps": 2, "batch_size": 4}),
                               tmp_path / "cache", tmp_path / "enc", seed=1, progress=False,
                               release_dir=tmp_path / "v1")
    params = _params(tiny_dir, init_from=str(tmp_path / "v1"), pooling="latent_attention",
                     latent_attention={"num_latents": 8, "num_heads": 8},
                     mntp={"steps": 0}, contrastive={"steps": 0},
                     head_training={"steps": 30, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2,
                                    "distill_weight": 0.0})
    result = adapt_text_encoder(reports, pairs, params, tmp_path / "cache", tmp_path / "enc2",
                                seed=1, progress=False, release_dir=tmp_path / "v2")
    assert len(result.head_losses) == 30
    assert np.mean(result.head_losses[-5:]) < np.mean(result.head_losses[:5])
    encoder = TextEncoder.from_pretrained(tmp_path / "v2")
    assert encoder.pooling == "latent_attention"
    assert (tmp_path / "v2" / "pooling_head.safetensors").is_file()
    # The body is the first release's: its token states are what the head was trained on.
    before = TextEncoder.from_pretrained(first.encoder_dir)
    a = TokenStates.compute(before.model, before.tokenizer, reports[:3], 48, progress=False)
    b = TokenStates.compute(encoder.model, encoder.tokenizer, reports[:3], 48, progress=False)
    assert all(torch.allclose(a.states[t].float(), b.states[t].float(), atol=1e-2)
               for t in reports[:3])
    # The released head is the head the encode path uses.
    vectors = encoder.encode(reports, progress=False, postprocess=False)
    hidden, mask = b.batch(reports[:3])
    with torch.no_grad():
        direct = encoder.pooling_head(hidden, mask).numpy()
    assert np.allclose(vectors[:3], direct, atol=2e-2)
    with pytest.raises(ValueError, match="only poolings .* have a head to train"):
        _params(tiny_dir, head_training={"steps": 5})


def test_head_beside_the_mean_learns_on_top_of_the_post_processed_mean(
        tiny_dir: Path, reports, tmp_path: Path) -> None:
    """Pooling 'mean_and_latent_attention': stage two trains the body mean-pooled, the
    post-processing is fitted on the mean, then the head trains with the mean beside it. The
    encoder returns both parts side by side: cosine = w * cos(means) + (1 - w) * cos(heads)."""
    from cxr_assets.text.head_training import TokenStates

    pairs = [(r, r.lower()) for r in reports]
    weight = 0.7
    params = _params(tiny_dir, pooling="mean_and_latent_attention",
                     latent_attention={"num_latents": 8, "num_heads": 8, "mean_weight": weight},
                     mntp={"steps": 0}, contrastive={"steps": 2, "batch_size": 4},
                     head_training={"steps": 20, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2,
                                    "distill_weight": 0.0})
    result = adapt_text_encoder(reports, pairs, params, tmp_path / "cache", tmp_path / "enc",
                                seed=1, progress=False, release_dir=tmp_path / "rel")
    assert len(result.head_losses) == 20 and len(result.contrastive_losses) == 2
    assert np.mean(result.head_losses[-5:]) < np.mean(result.head_losses[:5])
    for folder in (tmp_path / "enc", tmp_path / "rel"):
        encoder = TextEncoder.from_pretrained(folder)
        assert encoder.pooling == "mean_and_latent_attention"
        assert encoder.mean_weight == weight and encoder.dim == 2 * encoder.hidden_size
        assert encoder.postprocess is not None and encoder.postprocess.dim == encoder.hidden_size
        vectors = encoder.encode(reports, progress=False)
        assert vectors.shape == (len(reports), encoder.dim)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        # Built from the two parts as documented: the post-processed mean and the head's output.
        states = TokenStates.compute(encoder.model, encoder.tokenizer, reports, 48, progress=False)
        hidden, mask = states.batch(reports)
        with torch.no_grad():
            head = encoder.pooling_head(hidden, mask).numpy()
        mean = encoder.postprocess((hidden * mask[..., None]).sum(1).numpy()
                                   / mask.sum(1, keepdim=True).numpy())
        unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
        expected = (weight * unit(mean) @ unit(mean).T
                    + (1 - weight) * unit(head) @ unit(head).T)
        assert np.allclose(vectors @ vectors.T, expected, atol=2e-2)
    with pytest.raises(ValueError, match="trains its head in stage three"):
        _params(tiny_dir, pooling="mean_and_latent_attention")


def test_head_stage_resumes_after_a_kill_without_recomputing_states(
        tiny_dir: Path, reports, tmp_path: Path, monkeypatch) -> None:
    """A run killed in stage three restarts at its last head checkpoint: stages one and two are
    not retrained, the token states are read back, and the encoder equals an uninterrupted one."""
    from cxr_assets.text.head_training import TokenStates

    pairs = [(r, r.lower()) for r in reports]
    params = _params(tiny_dir, pooling="mean_and_latent_attention",
                     latent_attention={"num_latents": 8, "num_heads": 8},
                     mntp={"steps": 2, "batch_size": 4, "eval_batch_size": 2},
                     contrastive={"steps": 2, "batch_size": 4},
                     head_training={"steps": 8, "batch_size": 4, "warmup_steps": 2,
                                    "distill_weight": 0.0},
                     checkpoint={"every_n_steps": 3})
    whole = adapt_text_encoder(reports, pairs, params, tmp_path / "cache", tmp_path / "whole",
                               seed=5, progress=False)

    class Killed(Exception):
        pass

    def kill_at(stage: str, step: int, loss: float) -> None:
        if (stage, step) == ("head", 7):
            raise Killed

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Killed):
        adapt_text_encoder(reports, pairs, params, tmp_path / "cache", tmp_path / "resumed",
                           seed=5, progress=False, log_fn=kill_at, checkpoint_dir=ckpt)
    assert (ckpt / "token_states.pt").is_file()
    computed: list[int] = []
    real_compute = TokenStates.compute.__func__
    monkeypatch.setattr(TokenStates, "compute", classmethod(
        lambda cls, *a, **k: computed.append(1) or real_compute(cls, *a, **k)))
    steps: list[tuple[str, int]] = []
    resumed = adapt_text_encoder(reports, pairs, params, tmp_path / "cache", tmp_path / "resumed",
                                 seed=5, progress=False, checkpoint_dir=ckpt,
                                 log_fn=lambda stage, step, loss: steps.append((stage, step)))
    assert resumed.resumed_from == "head step 6"
    assert steps == [("head", 6), ("head", 7)] and not computed
    assert resumed.head_losses == pytest.approx(whole.head_losses)
    assert resumed.content_hash == whole.content_hash
    assert not ckpt.exists()


def test_contrastive_tasks_train_stage_two_on_the_named_tasks_only(
        tiny_dir: Path, reports, tmp_path: Path, monkeypatch) -> None:
    """`contrastive.tasks` (a round on finding queries): stage two sees only those pairs, each
    still with its own hard negative; an unknown task is refused with the tasks that exist."""
    from cxr_assets.text import contrastive

    seen: list[tuple[list, list, list]] = []
    real = contrastive.train_contrastive

    def spy(model, tokenizer, pairs, *args, **kwargs):
        seen.append((pairs, kwargs["hard_negatives"], kwargs["tasks"]))
        return real(model, tokenizer, pairs, *args, **kwargs)

    monkeypatch.setattr(contrastive, "train_contrastive", spy)
    pairs = [(r, r.lower()) for r in reports]
    tasks = ["abbreviated" if i % 2 else "finding_statement" for i in range(len(pairs))]
    negatives = [f"not {i}" for i in range(len(pairs))]
    params = _params(tiny_dir, mntp={"steps": 0},
                     contrastive={"steps": 2, "batch_size": 2, "tasks": ["finding_statement"]})
    adapt_text_encoder(reports, pairs, params, tmp_path / "cache", tmp_path / "out", seed=3,
                       progress=False, hard_negatives=negatives, tasks=tasks)
    kept = [i for i, t in enumerate(tasks) if t == "finding_statement"]
    assert seen == [([pairs[i] for i in kept], [negatives[i] for i in kept],
                     ["finding_statement"] * len(kept))]

    wrong = _params(tiny_dir, mntp={"steps": 0}, contrastive={"steps": 2, "tasks": ["typo"]})
    with pytest.raises(ValueError, match=r"contrastive.tasks \['typo'\].*'abbreviated'"):
        adapt_text_encoder(reports, pairs, wrong, tmp_path / "cache", tmp_path / "bad", seed=3,
                           progress=False, hard_negatives=negatives, tasks=tasks)
    with pytest.raises(ValueError, match="carry no task names"):
        adapt_text_encoder(reports, pairs, params, tmp_path / "cache", tmp_path / "bad", seed=3,
                           progress=False)
