"""The pair scorer (cross-encoder stage of a matcher): serialisation, augmentation, fine-tuning, ONNX =
torch, top-m selection. End to end (training inside train_matcher, bundle): test_pair_scorer_e2e.py."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pmatch_duckdb.errors import PmatchError
from pmatch_duckdb.pair_scorer import (
    PairScorer,
    SerializeOptions,
    Summarizer,
    logit,
    serialize_offer,
    top_m_mask,
)

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from pmatch_duckdb.training.pair_model import (  # noqa: E402
    PAIR_RECIPES,
    CrossEncoder,
    PairOptions,
    PairSet,
    PairTrainConfig,
    augment_pair,
    cap_pairs,
    export_cross_encoder,
    frozen_states,
    minilm_dir,
    resolve_device,
    resolve_recipe,
    subsample_negatives,
    torch_logits,
    train_cross_encoder,
    upper_logits,
)

TINY = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 128}


def test_serialization_marks_ids_and_summarizes():
    opts = SerializeOptions(mark_ids=True, desc_tokens=4)
    s = serialize_offer("Sony KDL-40V4100 40 inch TV", "Sony", 499.0, ["kdl40v4100"], "a b c d e f", opts)
    assert s == ("COL title VAL Sony KDL-40V4100 # 40 # inch TV COL brand VAL Sony COL price VAL 499.00 "
                 "COL id VAL kdl40v4100 COL description VAL a b c d")
    plain = serialize_offer("Sony TV 40", None, float("nan"), ["x1"], None, SerializeOptions(mark_ids=False))
    assert plain == "COL title VAL Sony TV 40"
    summ = Summarizer.fit(["the camera body is black", "the camera lens is black", "the great zoom lens x100"] * 2)
    out = serialize_offer("t", None, None, [], "the great camera is the zoom lens x100 black",
                          SerializeOptions(summarize=True, desc_tokens=3), summ)
    assert out.endswith("COL description VAL great zoom x100")  # rare words kept, in their order


def test_augmentation_keeps_the_content_words():
    rng = random.Random(0)
    a, b = "COL title VAL one two three four five six COL brand VAL x", "COL title VAL other"
    for _ in range(20):
        x, y = augment_pair(a, b, rng)
        assert {x, y} == {a, b} or (len((x + y).split()) <= len((a + b).split()))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_onnx_export_equals_torch(tmp_path: Path, pooling: str):
    tok = minilm_dir() / "tokenizer.json"
    a = ["COL title VAL acme widget pro", "COL title VAL b", "COL title VAL sony tv 40 inch black"] * 4
    b = ["COL title VAL acme widget lite", "COL title VAL b c", "COL title VAL sony television"] * 4
    y = np.array([0, 1, 1] * 4, dtype=np.float32)
    model, info = train_cross_encoder(a, b, y, tok, PairTrainConfig(max_len=24, epochs=2, batch_size=4, threads=1,
                                                                    freeze_layers=0, tiny_bert=TINY,
                                                                    pooling=pooling))
    assert model.pooling == pooling
    assert info["steps"] == 6 and len(info["loss_history"]) == 2
    diff = export_cross_encoder(model, tmp_path, tok, 24, a, b)
    assert diff <= 1e-4
    cfg = {"max_len": 24, "serialize": SerializeOptions().to_dict()}
    from pmatch_duckdb.bundles import sha256_file

    scorer = PairScorer(tmp_path / "pair_model.onnx", sha256_file(tmp_path / "pair_model.onnx"),
                        tmp_path / "pair_tokenizer.json", cfg, batch_size=5)  # batches of uneven length
    np.testing.assert_allclose(scorer.logits(a, b), torch_logits(model, tok, 24, a, b), atol=1e-4)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_precomputed_frozen_layers_give_the_full_models_logits(pooling: str):
    """Training on stored outputs of the frozen layers is training the same model: in eval mode the upper
    layers on those outputs (unpadded, re-padded to another width) give the full forward pass's logits —
    with mean pooling too, where the extra padding must not enter the mean."""
    tiny = {**TINY, "num_hidden_layers": 3}
    model = CrossEncoder.build(tiny_config=tiny, seed=3, pooling=pooling)
    model.eval()
    from pmatch_duckdb.pair_scorer import PairTokenizer

    tok = PairTokenizer(minilm_dir() / "tokenizer.json", 32)
    a, b = ["COL title VAL sony tv 40 inch black", "COL title VAL x"], ["COL title VAL sony", "COL title VAL x y z"]
    ids, mask, types = (torch.from_numpy(v) for v in tok(a, b))
    with torch.no_grad():
        want = model(ids, mask, types)
        h = frozen_states(model, ids, mask, types, 2)
        # each pair's states cut to its own length and padded to a wider batch, as training stores them
        wide = torch.zeros((2, h.shape[1] + 5, h.shape[2]))
        m2 = torch.zeros((2, h.shape[1] + 5), dtype=torch.int64)
        for r in range(2):
            n = int(mask[r].sum())
            wide[r, :n], m2[r, :n] = h[r, :n], 1
        got = upper_logits(model, wide, m2, 2)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def test_precomputed_training_learns_and_subsamples_negatives():
    y = np.array([1] * 10 + [0] * 100, dtype=np.float32)
    keep = subsample_negatives(y, 3.0, seed=0)
    assert len(keep) == 40 and y[keep].sum() == 10 and len(set(keep)) == 40
    assert len(subsample_negatives(y, None, 0)) == 110 and len(subsample_negatives(y, 20.0, 0)) == 110
    tok = minilm_dir() / "tokenizer.json"
    a = ["COL title VAL acme widget pro", "COL title VAL sony tv black"] * 8
    b = ["COL title VAL acme widget pro", "COL title VAL zenko drone red"] * 8
    lab = np.array([1, 0] * 8, dtype=np.float32)
    cfg = PairTrainConfig(max_len=16, epochs=30, batch_size=8, lr=3e-3, threads=1, freeze_layers=1,
                          neg_ratio=None, tiny_bert={**TINY, "num_hidden_layers": 2})
    model, info = train_cross_encoder(a, b, lab, tok, cfg)
    assert info["precomputed_frozen_layers"] and info["loss_history"][-1] < 0.5 * info["loss_history"][0]
    out = torch_logits(model, tok, 16, a[:2], b[:2])
    assert out[0] > out[1]


def test_mean_pooling_reads_every_token_and_ignores_padding():
    """"mean" pooling: the head sees the average of the real tokens' states, and a padded position never
    moves it; an unknown pooling name is an error naming the accepted ones."""
    model = CrossEncoder.build(tiny_config=TINY, seed=1, pooling="mean")
    model.eval()
    h = torch.randn(2, 6, TINY["hidden_size"])
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    pooled = model.pool(h, mask)
    np.testing.assert_allclose(pooled[0].numpy(), h[0, :3].mean(0).numpy(), atol=1e-6)
    np.testing.assert_allclose(pooled[1].numpy(), h[1].mean(0).numpy(), atol=1e-6)
    h2 = h.clone()
    h2[0, 4] += 100.0  # a padded position
    np.testing.assert_allclose(model.pool(h2, mask).numpy(), pooled.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="'cls' or 'mean'"):
        CrossEncoder.build(tiny_config=TINY, pooling="max")


def test_top_m_mask():
    s = np.array([0, 0, 0, 1, 1, 2])
    sc = np.array([0.1, 0.9, 0.5, 0.2, 0.3, 0.0])
    assert top_m_mask(s, sc, 2).tolist() == [False, True, True, True, True, True]
    assert not top_m_mask(s, sc, 0).any()


def test_cap_pairs_keeps_whole_label_groups_within_the_cap():
    """The pair stage's cost must not grow with the catalog: at most ``max_pairs`` pairs, whole label
    components (a source keeps all its candidates; the stacked model's folds are by component), seeded."""
    rng = np.random.default_rng(0)
    comp = np.repeat(np.arange(300), 2)  # 600 offers in 300 label components
    src = rng.integers(0, 600, 2_000)
    ps = PairSet(src, rng.integers(0, 600, 2_000), (rng.random(2_000) < 0.3).astype(float), rng.random(2_000))
    out = cap_pairs(ps, 500, comp, seed=0)
    assert 400 <= len(out) <= 500
    kept = set(comp[out.src].tolist())
    assert int(np.isin(comp[ps.src], list(kept)).sum()) == len(out)  # every pair of a kept component
    again = cap_pairs(ps, 500, comp, seed=0)
    assert np.array_equal(again.src, out.src) and np.array_equal(again.tgt, out.tgt)
    assert not np.array_equal(cap_pairs(ps, 500, comp, seed=1).src, out.src)
    assert cap_pairs(ps, None, comp, 0) is ps and cap_pairs(ps, 2_000, comp, 0) is ps
    one = cap_pairs(PairSet(np.zeros(50, np.int64), np.arange(50), np.zeros(50), np.zeros(50)), 10, comp, 0)
    assert len(one) == 50  # a single component larger than the cap is kept whole rather than dropped


def test_pair_stage_is_skipped_when_one_side_has_no_text(tmp_path: Path):
    """Photo-only sources (no title, no description) against a catalog: the cross-encoder would read
    "COL title VAL" against the catalog's text, so the pair stage is skipped before any fine-tuning,
    with a reason in the training log. With text on both sides the share is 1."""
    from types import SimpleNamespace

    from pmatch_duckdb.training.pair_model import PairOptions, pair_stage, text_pair_share

    n = 12
    rows = SimpleNamespace(titles=[None] * 6 + [f"acme widget {i}" for i in range(6)],
                           descriptions=[""] * 3 + ["  "] * 3 + [None] * 6)
    src, tgt = np.arange(6), np.arange(6, 12)  # photos 0..5 -> catalog 6..11
    assert text_pair_share(rows, src, tgt) == 0.0
    assert text_pair_share(rows, tgt, tgt[::-1]) == 1.0
    rows.descriptions[0] = "a red widget"  # one photo with a description
    assert text_pair_share(rows, src, tgt) == pytest.approx(1 / 6)
    logs: list[str] = []
    split = (np.zeros((6, 2)), np.ones(6), {"src": src, "tgt": tgt})
    out = pair_stage(tmp_path, PairOptions(min_positives=1), rows=rows, decision=None, open_world=True, view=None,
                     tgt_pos=np.arange(n), comp=np.arange(n), truth_pairs=set(), exclude_self=False,
                     train_split=split, valid_split=split, target_precision=0.99, max_recall_loss=0.05,
                     log=logs.append)
    assert out is None and list(tmp_path.iterdir()) == []
    assert any("pair model skipped" in m and "text" in m for m in logs), logs


def _edition_pairs(n: int = 8) -> tuple[list[str], list[str], np.ndarray]:
    a = ["COL title VAL acme widget pro", "COL title VAL sony tv black"] * n
    b = ["COL title VAL acme widget pro", "COL title VAL zenko drone red"] * n
    return a, b, np.array([1, 0] * n, dtype=np.float32)


def test_validation_picks_the_best_epochs_model(monkeypatch: pytest.MonkeyPatch):
    """With validation pairs, the model returned is the one of the epoch with the highest validation AP (here
    epoch 2 of 3, by a scripted AP), not the last one; the history and the chosen epoch are reported."""
    import pmatch_duckdb.training.pair_model as pm_mod

    script, snapshots = iter([0.5, 0.9, 0.3]), []

    def scripted_ap(model, batches, y):  # noqa: ANN001, ANN202
        list(batches())  # the validation pass runs
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return next(script)

    monkeypatch.setattr(pm_mod, "_valid_ap", scripted_ap)
    a, b, y = _edition_pairs()
    cfg = PairTrainConfig(max_len=16, epochs=3, batch_size=8, lr=3e-3, threads=1, freeze_layers=1, neg_ratio=None,
                          tiny_bert=TINY, patience=None)
    model, info = train_cross_encoder(a, b, y, minilm_dir() / "tokenizer.json", cfg, valid=(a[:4], b[:4], y[:4]))
    assert info["valid_ap_history"] == [0.5, 0.9, 0.3] and info["best_epoch"] == 2 and info["epochs_run"] == 3
    got = model.state_dict()
    assert all(torch.equal(got[k], snapshots[1][k]) for k in got)
    assert not all(torch.equal(got[k], snapshots[2][k]) for k in got)  # the last epoch did change the weights


@pytest.mark.parametrize("precompute", [True, False])
def test_patience_stops_when_validation_does_not_improve(precompute: bool):
    """lr 0: the weights never move, so validation AP is the same every epoch; with patience 1 training stops
    after epoch 2 (epoch 1 stays the best). The measured AP is the real one of the returned model, with the
    frozen layers precomputed for the validation pairs or not."""
    from pmatch_duckdb.decision import average_precision

    a, b, y = _edition_pairs()
    va = (a[:6], b[:6], np.array([1, 0, 1, 0, 1, 0], dtype=np.float32))
    tok = minilm_dir() / "tokenizer.json"
    cfg = PairTrainConfig(max_len=16, epochs=5, batch_size=8, lr=0.0, threads=1, freeze_layers=1, neg_ratio=None,
                          tiny_bert=TINY, patience=1, precompute=precompute)
    model, info = train_cross_encoder(a, b, y, tok, cfg, valid=va)
    assert info["epochs_run"] == 2 and info["best_epoch"] == 1 and info["steps"] == 4
    assert info["precomputed_frozen_layers"] is precompute and info["device"] == "cpu"
    assert len(set(info["valid_ap_history"])) == 1
    want = average_precision(torch_logits(model, tok, 16, va[0], va[1]).astype(np.float64), va[2].astype(np.float64))
    assert info["valid_ap_history"][0] == pytest.approx(want, abs=1e-6)
    _, no_valid = train_cross_encoder(a, b, y, tok, cfg)  # without validation pairs every epoch runs
    assert no_valid["epochs_run"] == 5 and "valid_ap_history" not in no_valid


def test_device_resolution(monkeypatch: pytest.MonkeyPatch):
    """'auto' takes a CUDA GPU only when torch sees one; an explicit 'cuda' without one, or an unknown
    name, is an error that says what to use."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("CPU") == "cpu"
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        resolve_device("cuda:0")
    with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"


def test_pair_recipes(monkeypatch: pytest.MonkeyPatch):
    """The cpu recipe is the dataclass defaults; 'auto' takes the gpu recipe only where the device resolves to a
    CUDA GPU; knobs given explicitly win over the recipe's; an unknown recipe is an error listing the known."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_recipe("auto") == "cpu" and resolve_recipe("GPU", "cpu") == "gpu"
    assert PairOptions.from_recipe() == PairOptions() and PAIR_RECIPES["cpu"] == {}
    with pytest.raises(ValueError, match="sees no CUDA GPU"):  # auto with an explicit cuda that is not there
        resolve_recipe("auto", "cuda")
    with pytest.raises(ValueError, match=r"\['cpu', 'gpu'\], not 'tpu'"):
        PairOptions.from_recipe("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_recipe("auto") == "gpu" and resolve_recipe("auto", "cpu") == "cpu"
    gpu = PairOptions.from_recipe(train={"epochs": 2, "seed": 7}, serialize={"mark_ids": False}, max_valid_pairs=10)
    assert gpu.recipe == "gpu" and gpu.max_train_pairs is None and gpu.max_valid_pairs == 10
    t = gpu.train
    assert (t.max_len, t.freeze_layers, t.lr, t.augment, t.neg_ratio, t.patience) == (256, 0, 5e-5, True, None, 5)
    assert (t.epochs, t.seed, t.device) == (2, 7, "auto")  # given explicitly
    assert gpu.serialize == SerializeOptions(mark_ids=False, desc_tokens=128)
    cpu = PairOptions.from_recipe("cpu", "cpu", train={"max_len": 96})
    assert cpu.recipe == "cpu" and cpu.train == PairTrainConfig(max_len=96, device="cpu")


@pytest.mark.parametrize(("open_world", "exclude_self", "given", "mined"),
                         [(True, True, None, 0), (True, False, None, 2), (False, True, None, 2), (True, True, 3, 3)])
def test_pair_stage_mines_no_hard_negatives_from_one_labelled_table(monkeypatch: pytest.MonkeyPatch, open_world: bool,
                                                                    exclude_self: bool, given: int | None, mined: int):
    """Labelled pairs within one table (dedup, open world): no mined hard negatives by default, since a labelled
    offer's best unlabelled candidates there are often other offers of its product; two tables, or group labels
    (closed world: every candidate is labelled), keep 2; an explicit number always wins. The count is recorded."""
    import types

    import pmatch_duckdb.training.pair_model as pm_mod
    from pmatch_duckdb.training.pair_model import PairOptions, pair_stage

    calls: dict = {}

    def fake_candidates(rows, view, tgt_pos, decision, sources, exclude_self, truth, top):  # noqa: ANN001, ANN202
        calls["top"] = top
        return PairSet(sources, sources + 1, np.zeros(len(sources)), np.zeros(len(sources)))

    def fake_fit(rows, train, hard, valid, **kw):  # noqa: ANN001, ANN003, ANN202
        calls["train"], calls["hard"] = len(train), len(hard)
        calls["stage1_accepts"] = (kw["stage1_accepts"], valid.raw >= 0.5)
        return {}

    monkeypatch.setattr(pm_mod, "candidate_set", fake_candidates)
    monkeypatch.setattr(pm_mod, "fit_pair_stage", fake_fit)
    n = 40
    rows = types.SimpleNamespace(titles=[f"offer {i}" for i in range(2 * n)], descriptions=[None] * (2 * n))
    decision = types.SimpleNamespace(raw=lambda x: x[:, 0], calibrate=lambda r: r, accept_threshold=0.5)
    src, tgt = np.arange(n), np.arange(n) + n
    split = (np.random.default_rng(0).random((n, 1)), np.ones(n), {"src": src, "tgt": tgt})
    logs: list[str] = []
    entry = pair_stage(Path("."), PairOptions(hard_negatives=given, min_positives=1), rows=rows, decision=decision,
                       open_world=open_world, view=None, tgt_pos=np.arange(2 * n), comp=np.arange(2 * n),
                       truth_pairs=set(), exclude_self=exclude_self, train_split=split, valid_split=split,
                       target_precision=0.99, max_recall_loss=0.02, log=logs.append)
    assert entry["hard_negatives"] == mined
    got, want = calls["stage1_accepts"]  # which validation pairs stage 1 alone accepts (the veto's statistics)
    assert got.tolist() == want.tolist() and 0 < want.sum() < len(want)
    if open_world:
        assert calls.get("top") == (mined + 1 if mined else None)  # nothing mined: no candidate search at all
        assert calls["hard"] == (n if mined else 0)
        assert any("no mined hard negatives" in m for m in logs) is (given is None and mined == 0)
    else:
        assert calls["train"] == n  # closed world: each source's top_m + mined candidates (here one each)


def _train_cli(monkeypatch: pytest.MonkeyPatch, arg: str) -> tuple[Callable[[list[str]], object], list]:
    """``pmatch train``'s CLI with train_matcher replaced by a recorder: (invoke(args) → the click result, the list
    of the ``arg`` keyword each call passed)."""
    from click.testing import CliRunner

    import pmatch_duckdb.training as training
    from pmatch_duckdb.cli import main as cli

    seen: list = []

    class _Result:
        metrics: dict = {}

    def fake_train(con, tables, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.append(kw[arg])
        return _Result()

    monkeypatch.setattr(training, "train_matcher", fake_train)
    return (lambda args: CliRunner().invoke(cli, args)), seen


def test_train_cli_builds_pair_options_from_the_recipe(monkeypatch: pytest.MonkeyPatch, home: Path, tmp_path: Path):
    """`pmatch train --pair-recipe`: the recipe's knobs reach train_matcher, --pair-* options given override them
    (0 keeps its meaning: every epoch / every pair), and --pair-device cuda without a GPU is a usage error."""
    invoke, seen = _train_cli(monkeypatch, "pair_options")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    base = ["train", str(tmp_path / "shop.duckdb"), "--offers", "feed", "--home", str(home)]
    for extra in ([], ["--pair-recipe", "gpu", "--pair-epochs", "4", "--pair-patience", "0"],
                  ["--pair-max-len", "96", "--pair-max-train-pairs", "0", "--seed", "3"],
                  ["--pair-kind", "siamese", "--pair-epochs", "5"],
                  ["--pair-kind", "known"],
                  ["--pair-kind", "siamese", "--no-pair-known-products"]):
        res = invoke(base + extra)
        assert res.exit_code == 0, res.output
    cpu, gpu, given, siamese, known, unknown = seen
    assert known.train.kind == "known" and known.train.known_products
    seen.remove(known)
    assert siamese.train.known_products and not unknown.train.known_products and unknown.train.kind == "siamese"
    seen.pop()
    assert cpu.train.kind == "cross" and siamese.train.kind == "siamese" and siamese.recipe == "cpu"
    assert (siamese.train.epochs, siamese.train.freeze_layers, siamese.train.lr) == (5, 0, 1e-4)
    assert cpu == PairOptions() and cpu.recipe == "cpu"
    assert gpu.recipe == "gpu" and (gpu.train.max_len, gpu.train.epochs, gpu.train.patience) == (256, 4, None)
    assert gpu.serialize.desc_tokens == 128 and gpu.train.augment and gpu.max_train_pairs is None
    assert given.recipe == "cpu" and (given.train.max_len, given.train.seed, given.train.epochs) == (96, 3, 3)
    assert given.max_train_pairs is None and given.train.freeze_layers == 4
    assert siamese.min_positives is None and siamese.matches_needed() == 200  # no --pair-min-matches: the kind's
    res = invoke([*base, "--pair-device", "cuda"])
    assert res.exit_code == 2 and "sees no CUDA GPU" in res.output and len(seen) == 4
    res = invoke([*base, "--pair-kind", "triple"])
    assert res.exit_code == 2 and "--pair-kind" in res.output and len(seen) == 4


@pytest.mark.parametrize("kind", ["bert", "roberta", "xlm-roberta", "mpnet", "distilbert"])
def test_siamese_frozen_layers_run_once_and_train_the_same_model(kind: str, tmp_path: Path):
    """With frozen lower layers the siamese recipe runs them once per offer and trains the upper layers on their
    stored output (each architecture through its own forward, MPNet's relative position bias included): the
    embeddings equal the whole encoder's, and training on stored states gives the model that training through every
    layer gives (dropout off, so both runs draw the same numbers). The frozen parameters do not move."""
    import torch
    from test_text_export import CORPUS, make_model, make_tokenizer

    from pmatch_duckdb.training.pair_base import read_pair_base, write_base_tokenizer
    from pmatch_duckdb.training.siamese import (
        SiameseEncoder,
        _embed_stored,
        _tokenizer,
        embed_texts,
        encoder_layers,
        lower_states,
        train_siamese_encoder,
    )

    texts, groups, a, b = _siblings()
    folder = tmp_path / kind
    hf_tok = make_tokenizer(kind, corpus=[*CORPUS, *texts, *a, *b])
    model = make_model(kind, len(hf_tok), seed=1, **({} if kind == "distilbert" else {"num_hidden_layers": 3}))
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
        if hasattr(model.config, key):
            setattr(model.config, key, 0.0)
    model.save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    base = read_pair_base(folder)
    tok_json = tmp_path / "tok.json"
    pad = write_base_tokenizer(base, tok_json, 16)
    enc = SiameseEncoder.build(base=base)
    n_layers = len(encoder_layers(enc.bert))
    tok = _tokenizer(tok_json, 16, pad)
    whole = embed_texts(enc, tok, [*texts, *a, *b])
    for n_frozen in range(n_layers):
        got = _embed_stored(enc, lower_states(enc, tok, [*texts, *a, *b], n_frozen, "cpu"), n_frozen, "cpu")
        np.testing.assert_allclose(got, whole, atol=1e-5, err_msg=f"{kind}, {n_frozen} layers stored")
    assert len(encoder_layers(enc.bert)) == n_layers and type(enc.bert.embeddings).__name__ != "_Given"

    cfg = PairTrainConfig(kind="siamese", max_len=16, epochs=4, lr=3e-3, threads=1, freeze_layers=1,
                          batch_groups=3, temperature=0.1, patience=None)
    va = (a, b, np.array([1.0, 0.0, 0.0]))
    stored, info = train_siamese_encoder(texts, groups, tok_json, cfg, valid=va, base=base, pad_id=pad)
    through, info2 = train_siamese_encoder(texts, groups, tok_json, dataclasses.replace(cfg, precompute=False),
                                           valid=va, base=base, pad_id=pad)
    assert (info["precomputed_frozen_layers"], info2["precomputed_frozen_layers"]) == (True, False)
    assert info["frozen_layers"] == 1 and info["steps"] == info2["steps"] > 0
    np.testing.assert_allclose(info["loss_history"], info2["loss_history"], rtol=1e-4)
    np.testing.assert_allclose(embed_texts(stored, tok, texts), embed_texts(through, tok, texts), atol=1e-4)
    before = SiameseEncoder.build(base=base).bert.state_dict()
    after = stored.bert.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    upper = {id(p) for layer in encoder_layers(stored.bert)[1:] for p in layer.parameters()}
    upper_names = {name for name, p in stored.bert.named_parameters() if id(p) in upper}
    assert moved and moved <= upper_names, sorted(moved - upper_names)


def test_train_cli_pair_base_is_checked_before_training(monkeypatch: pytest.MonkeyPatch, home: Path, tmp_path: Path):
    """`pmatch train --pair-base FOLDER`: reaches train_matcher with the siamese kind; without it, or with a folder
    that cannot be used, a usage error naming --pair-base before anything trains."""
    from test_text_export import make_model, make_tokenizer

    invoke, seen = _train_cli(monkeypatch, "pair_options")
    folder = tmp_path / "mpnet"
    tok = make_tokenizer("mpnet")
    make_model("mpnet", len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    base = ["train", str(tmp_path / "shop.duckdb"), "--offers", "feed", "--home", str(home)]
    res = invoke([*base, "--pair-kind", "siamese", "--pair-base", str(folder)])
    assert res.exit_code == 0, res.output
    assert seen[0].train.base == str(folder) and seen[0].train.kind == "siamese"
    # the cpu recipe freezes the lower half of the base's layers (stored once); the command line or the gpu recipe
    # says otherwise
    assert seen[0].train.freeze_layers == 1 and seen[0].recipe == "cpu"
    res = invoke([*base, "--pair-kind", "siamese", "--pair-base", str(folder), "--pair-freeze-layers", "0"])
    assert res.exit_code == 0 and seen[1].train.freeze_layers == 0, res.output
    gpu = PairOptions.from_recipe("gpu", "cpu", train={"kind": "siamese", "base": str(folder)})
    assert gpu.train.freeze_layers == 0 and PairOptions.from_recipe("cpu", "cpu", train={"kind": "siamese"}).train.freeze_layers == 0
    for extra, msg in ((["--pair-base", str(folder)], "give it with --pair-kind siamese"),
                       (["--pair-kind", "siamese", "--pair-base", str(tmp_path / "nowhere")], "does not exist"),
                       (["--pair-kind", "siamese", "--pair-base", str(tmp_path)], "no config.json")):
        res = invoke(base + extra)
        assert res.exit_code == 2 and "--pair-base" in res.output and msg in res.output, res.output
    assert len(seen) == 2


def test_train_cli_passes_the_validation_split(monkeypatch: pytest.MonkeyPatch, home: Path, tmp_path: Path):
    """`pmatch train --valid-split`: auto by default, the choice given reaches train_matcher, others are refused."""
    invoke, seen = _train_cli(monkeypatch, "valid_split")
    base = ["train", str(tmp_path / "shop.duckdb"), "--offers", "feed", "--pairs", "pm_labels", "--home", str(home)]
    for extra in ([], ["--valid-split", "offers"], ["--valid-split", "latest"], ["--valid-split", "groups"]):
        res = invoke(base + extra)
        assert res.exit_code == 0, res.output
    assert seen == ["auto", "offers", "latest", "groups"]
    res = invoke([*base, "--valid-split", "newest"])
    assert res.exit_code == 2 and "--valid-split" in res.output and len(seen) == 4


# ------------------------------------------------------------------------------------ the siamese kind


def test_hard_batches_cover_every_offer_once_and_put_near_groups_together():
    from pmatch_duckdb.training.siamese import hard_batches

    # four groups on two far-apart directions: 0/1 near each other, 2/3 near each other
    emb = np.array([[1, 0, 0], [1, 0.1, 0], [0.9, 0.2, 0], [1, 0.15, 0], [0, 0, 1], [0, 0.1, 1], [0.1, 0, 1],
                    [0, 0.05, 0.9]], dtype=np.float32)
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    for seed in range(5):
        batches = hard_batches(emb, groups, 2, random.Random(seed))
        assert sorted(np.concatenate(batches).tolist()) == list(range(8))
        assert sorted(sorted(set(groups[b].tolist())) for b in batches) == [[0, 1], [2, 3]]


def test_supcon_loss_prefers_separated_groups_and_needs_a_positive():
    from pmatch_duckdb.training.siamese import supcon_loss

    lab = torch.tensor([0, 0, 1, 1])
    good = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 0.1], [0, 1], [0.1, 1]]), dim=-1)
    bad = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0, 1], [1, 0.1], [0.1, 1]]), dim=-1)
    assert float(supcon_loss(good, lab, 0.1)) < float(supcon_loss(bad, lab, 0.1))
    assert supcon_loss(good, torch.tensor([0, 1, 2, 3]), 0.1) is None  # groups of one: negatives only


def _siblings() -> tuple[list[str], np.ndarray, list[str], list[str]]:
    """Three offers of each of six products (three names in two editions), their product ids, and three test pairs
    (a[i], b[i]): the same product, then two siblings (same name, the other edition)."""
    texts, groups = [], []
    for g, (name, ed) in enumerate([(n, e) for n in ("acme widget", "zenko drone", "orbis camera")
                                    for e in ("pro", "lite")]):
        texts += [f"COL title VAL {name} {ed}", f"COL title VAL {ed} {name} new", f"COL title VAL the {name} {ed}"]
        groups += [g] * 3
    a = ["COL title VAL acme widget pro", "COL title VAL zenko drone lite", "COL title VAL orbis camera pro"]
    b = ["COL title VAL pro acme widget new", "COL title VAL zenko drone pro", "COL title VAL the orbis camera lite"]
    return texts, np.array(groups), a, b


def _same_and_sibling(e: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """Mean cosine of two offers of one product, and of two siblings (``groups`` // 2: one name)."""
    n = len(groups)
    same = np.mean([e[i] @ e[j] for i in range(n) for j in range(n) if i != j and groups[i] == groups[j]])
    sibling = np.mean([e[i] @ e[j] for i in range(n) for j in range(n)
                       if groups[i] // 2 == groups[j] // 2 and groups[i] != groups[j]])
    return float(same), float(sibling)


def test_siamese_training_separates_siblings_and_onnx_equals_torch(tmp_path: Path):
    """Offers of one product (same group) end up closer than a sibling that differs in one word; the exported
    graph gives torch's embeddings and the scorer's logit is their cosine over the temperature."""
    from pmatch_duckdb.bundles import sha256_file
    from pmatch_duckdb.pair_scorer import SiameseScorer, load_pair_scorer
    from pmatch_duckdb.training.siamese import export_siamese_encoder, torch_embeddings, train_siamese_encoder

    tok = minilm_dir() / "tokenizer.json"
    texts, groups, a, b = _siblings()
    va = (a, b, np.array([1.0, 0.0, 0.0]))
    cfg = PairTrainConfig(kind="siamese", max_len=16, epochs=12, lr=3e-3, threads=1, freeze_layers=0,
                          batch_groups=6, temperature=0.1, patience=None, tiny_bert=TINY)
    model, info = train_siamese_encoder(texts, groups, tok, cfg)
    assert info["epochs_run"] == 12 and info["groups"] == 6 and "valid_ap_history" not in info
    assert info["loss_history"][-1] < 0.5 * info["loss_history"][0]
    # with validation pairs every epoch is scored, and patience stops after epochs without a gain
    _, vinfo = train_siamese_encoder(texts, groups, tok, dataclasses.replace(cfg, epochs=6, patience=1), valid=va)
    assert len(vinfo["valid_ap_history"]) == vinfo["epochs_run"] <= 6 and vinfo["best_epoch"] >= 1
    same, sibling = _same_and_sibling(torch_embeddings(model, tok, 16, texts), groups)
    assert same > sibling + 0.2, (same, sibling)
    diff = export_siamese_encoder(model, tmp_path, tok, 16, texts)
    assert diff <= 1e-4
    # freezing every layer leaves the siamese encoder (no head) nothing to train: a clear error, not torch's
    with pytest.raises(PmatchError, match=r"nothing to fine-tune: freeze_layers=2 freezes every one of its "
                                          r"encoder's 2 layers"):
        train_siamese_encoder(texts, groups, tok, dataclasses.replace(cfg, freeze_layers=2, epochs=1))
    cfg_json = {"kind": "siamese", "max_len": 16, "temperature": 0.1, "serialize": SerializeOptions().to_dict()}
    scorer = load_pair_scorer(tmp_path / "pair_model.onnx", sha256_file(tmp_path / "pair_model.onnx"),
                              tmp_path / "pair_tokenizer.json", cfg_json)
    assert isinstance(scorer, SiameseScorer)
    scorer.batch_size = 4  # batches of uneven length
    ea, eb = torch_embeddings(model, tok, 16, a), torch_embeddings(model, tok, 16, b)
    first = scorer.logits(a, b)
    np.testing.assert_allclose(first, np.einsum("ij,ij->i", ea, eb) / 0.1, atol=1e-3)
    assert scorer.logits([], []).shape == (0,)
    # each distinct offer goes through the model once; a second call reads the cache
    assert scorer.computed == len(set(a + b))
    np.testing.assert_array_equal(scorer.logits(a, b), first)
    assert scorer.computed == len(set(a + b))
    # a bounded cache (least recently used dropped), read from several threads at once, gives the model's
    # embeddings: the same as no cache at all
    onnx = (tmp_path / "pair_model.onnx", sha256_file(tmp_path / "pair_model.onnx"), tmp_path / "pair_tokenizer.json")
    plain = SiameseScorer(*onnx, cfg_json, cache_size=0)
    small = SiameseScorer(*onnx, cfg_json, cache_size=3)
    want = plain.embed(texts)
    assert plain.computed == len(texts) and not plain._cache
    lists = [[texts[(i * 5 + j) % len(texts)] for j in range(7)] for i in range(12)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(small.embed, lists))
    for ts, g in zip(lists, got, strict=True):
        np.testing.assert_allclose(g, want[[texts.index(t) for t in ts]], atol=1e-6)
    assert len(small._cache) <= 3
    lru = SiameseScorer(*onnx, cfg_json, cache_size=3)
    for t in texts[:4]:
        lru.embed([t])
    lru.embed(texts[1:4])  # the three most recent are kept
    assert lru.computed == 4
    lru.embed(texts[:1])  # the oldest was dropped
    assert lru.computed == 5
    with pytest.raises(ValueError, match="kind 'triple'"):
        load_pair_scorer(tmp_path / "pair_model.onnx", sha256_file(tmp_path / "pair_model.onnx"),
                         tmp_path / "pair_tokenizer.json", {**cfg_json, "kind": "triple"})
    # features: its logit; with known products (the training offers, by the same model) also theirs
    np.testing.assert_allclose(scorer.features(a, b)[:, 0], first, atol=1e-5)
    assert scorer.features(a, b).shape == (3, 1) and scorer.features([], []).shape == (0, 1)
    from pmatch_duckdb.pair_scorer import KnownProducts

    known = KnownProducts(scorer.embed(texts), groups)
    with_known = load_pair_scorer(*onnx, cfg_json, known=known)
    f = with_known.features(a, b)
    np.testing.assert_allclose(f[:, 0], first, atol=1e-5)
    np.testing.assert_allclose(f[:, 1], logit(np.clip(known.same_product(scorer.embed(a), scorer.embed(b)), 1e-4,
                                                      1 - 1e-4)), atol=1e-6)
    assert f[0, 1] > f[1, 1]  # the same product (a match) against siblings
    with pytest.raises(ValueError, match="need a siamese"):
        load_pair_scorer(*onnx, {**cfg_json, "kind": "cross"}, known=known)


def test_known_products_say_whether_two_offers_resolve_to_the_same_labelled_product(tmp_path: Path):
    """KnownProducts: each offer's nearest labelled offers give it a distribution over their match groups, and a
    pair's same-product probability is the chance both name one group; the bundle's JSON keeps it (float16)."""
    from pmatch_duckdb.pair_scorer import (
        STACKED_FEATURES,
        STACKED_FEATURES_KNOWN,
        KnownProducts,
        stacked_features,
    )

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    groups = np.repeat(np.arange(4), 3)
    known = KnownProducts(centres[groups] + 0.05 * rng.normal(size=(12, 16)), groups, neighbours=5, temperature=0.05)

    def near(g: int) -> np.ndarray:
        v = centres[g] + 0.05 * rng.normal(size=16)
        return (v / np.linalg.norm(v))[None, :]

    same = known.same_product(np.vstack([near(0), near(2)]), np.vstack([near(0), near(2)]))
    other = known.same_product(np.vstack([near(0), near(1)]), np.vstack([near(3), near(2)]))
    assert np.all(same > 0.95) and np.all(other < 0.05), (same, other)
    offers = np.vstack([near(g) for g in (0, 1, 2, 0)])
    ia, ib = np.array([0, 1, 3, 3]), np.array([3, 2, 0, 1])  # each distinct offer compared with the known once
    np.testing.assert_allclose(known.same_product(offers, offers, ia, ib), known.same_product(offers[ia], offers[ib]))
    g, w = known.group_weights(np.vstack([near(1)] * 3))
    assert g.shape == w.shape == (3, 5) and np.allclose(w.sum(axis=1), 1.0) and set(g[0, :3].tolist()) == {1}
    assert KnownProducts(known.embeddings[:2], groups[:2]).group_weights(near(0))[0].shape == (1, 2)  # k <= known
    # a known offer is not its own neighbour: its label would vouch for itself (and a lone one has none)
    g_self, w_self = known.group_weights(known.embeddings[:1])
    assert (g_self == 0).sum() == 2 and w_self[g_self == 0].sum() == pytest.approx(1.0, abs=1e-4), (g_self, w_self)
    assert known.same_product(known.embeddings[:1], known.embeddings[1:2]) > 0.95  # two labelled offers of group 0
    alone = KnownProducts(known.embeddings[:1], groups[:1])
    assert alone.group_weights(known.embeddings[:1])[1].sum() == 0.0
    assert alone.same_product(known.embeddings[:1], known.embeddings[:1]) == 0.0
    back = KnownProducts.from_json(json.loads(json.dumps(known.to_json())))
    np.testing.assert_allclose(back.embeddings, known.embeddings, atol=2e-3)
    assert back.groups.tolist() == groups.tolist() and (back.neighbours, back.temperature) == (5, 0.05)
    np.testing.assert_allclose(back.same_product(near(0), near(0)), known.same_product(near(0), near(0)), atol=0.05)
    with pytest.raises(ValueError, match="unknown format"):
        KnownProducts.from_json({**known.to_json(), "format": "v9"})
    with pytest.raises(ValueError, match="values for shape"):
        KnownProducts.from_json({**known.to_json(), "shape": [13, 16]})
    with pytest.raises(ValueError, match="group ids"):
        KnownProducts(known.embeddings, groups[:5])
    # the stacked model's input: stage 1's logit, then the scorer's columns (its logit; the known-product logit)
    x1, x2 = stacked_features(np.array([0.5, 0.9]), np.array([1.0, 2.0])), \
        stacked_features(np.array([0.5, 0.9]), np.array([[1.0, -3.0], [2.0, 4.0]]))
    assert x1.shape == (2, len(STACKED_FEATURES)) and x2.shape == (2, len(STACKED_FEATURES_KNOWN))
    assert stacked_features(np.zeros(0), np.zeros(0)).shape == (0, 2)
    assert stacked_features(np.zeros(0), np.zeros((0, 2))).shape == (0, 3)
    np.testing.assert_allclose(x2[:, 0], x1[:, 0]) and np.testing.assert_allclose(x2[:, 2], [-3.0, 4.0])


def test_the_known_kind_reads_fused_vectors_and_an_offer_without_one_gets_no_vote():
    """KnownProductsScorer: its feature of (source, target) position pairs is the known-product logit of their fused
    vectors (scaled to unit length), each distinct offer compared once; an offer without a vector (NaN) votes for no
    group (the clipped floor, finite); the loader refuses a pair kind it does not know, and the known kind through the ONNX loader."""
    from types import SimpleNamespace

    from pmatch_duckdb.pair_scorer import KnownProducts, KnownProductsScorer, load_pair_scorer, logit

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 8))
    groups = np.repeat(np.arange(3), 2)
    known = KnownProducts(centres[groups] + 0.05 * rng.normal(size=(6, 8)), groups, neighbours=3)
    sc = KnownProductsScorer({"kind": "known", "top_m": 4}, known)
    assert sc.top_m == 4 and sc.max_len == 0
    src = SimpleNamespace(fused=np.vstack([centres[0], centres[1], np.full(8, np.nan)]).astype(np.float32))
    tgt = SimpleNamespace(fused=np.vstack([centres[0] + 0.01, centres[2]]).astype(np.float32))
    s, t = np.array([0, 0, 1, 2, 0]), np.array([0, 1, 0, 0, 0])
    got = sc.pair_features(src, tgt, s, t)
    unit = np.vstack([c / np.linalg.norm(c) for c in src.fused]), np.vstack([c / np.linalg.norm(c) for c in tgt.fused])
    want = logit(np.clip(known.same_product(unit[0][s], unit[1][t]), 1e-4, 1 - 1e-4))  # (row 3: NaN, checked below)
    assert got.shape == (5, 1) and np.all(np.isfinite(got))
    np.testing.assert_allclose(got[[0, 1, 2, 4], 0], want[[0, 1, 2, 4]], atol=1e-6)
    assert got[0, 0] > 5 and got[1, 0] < -5 and got[2, 0] < -5, got  # same product / another / another
    assert got[3, 0] == pytest.approx(logit(np.array([1e-4]))[0])  # no vector: no vote
    assert sc.pair_features(src, tgt, np.zeros(0, np.int64), np.zeros(0, np.int64)).shape == (0, 1)
    with pytest.raises(ValueError, match="not one of"):
        load_pair_scorer(Path("x.onnx"), "0" * 64, Path("t.json"), {"kind": "known"})


def test_siamese_fine_tunes_a_local_mpnet_folder(tmp_path: Path, capfd: pytest.CaptureFixture[str]):
    """``--pair-base``: the siamese scorer starts from a local model folder, here a small random MPNet built in the
    test (no token type ids, its own WordPiece tokenizer, padding id 1); it learns the siblings apart, the exported
    graph takes only the inputs MPNet has and equals torch, and the scorer pads with the base's id. A folder that
    cannot be used is refused by name before anything trains."""
    from test_text_export import CORPUS, make_model, make_tokenizer

    from pmatch_duckdb.bundles import sha256_file
    from pmatch_duckdb.pair_scorer import load_pair_scorer
    from pmatch_duckdb.training.pair_base import (
        PairBaseError,
        load_base_model,
        read_pair_base,
        write_base_tokenizer,
    )
    from pmatch_duckdb.training.siamese import export_siamese_encoder, torch_embeddings, train_siamese_encoder

    texts, groups, a, b = _siblings()
    folder = tmp_path / "mpnet"
    hf_tok = make_tokenizer("mpnet", corpus=[*CORPUS, *texts, *a, *b])
    make_model("mpnet", len(hf_tok), seed=0).save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    base = read_pair_base(folder)
    assert (base.model_type, base.token_types, base.folder) == ("mpnet", False, folder)
    assert base.record()["weights_sha256"] == {"model.safetensors": sha256_file(folder / "model.safetensors")}
    assert base.description.startswith("MPNetModel from ")
    # loaded without its pooler, quietly: transformers' load report and weight bar stay out of `pmatch train`'s output
    capfd.readouterr()
    assert type(load_base_model(base)).__name__ == "MPNetModel"
    got = capfd.readouterr()
    assert "UNEXPECTED" not in got.out + got.err and "Loading weights" not in got.err, got
    tok = tmp_path / "base_tokenizer.json"
    pad = write_base_tokenizer(base, tok, 16)
    assert pad == 1 == hf_tok.pad_token_id
    # 30 epochs (one batch each): how fast a small random MPNet learns depends on its init. With the vocabulary
    # built above (the same every run), init 0 ends at 0.30 of its first loss with a same-vs-sibling margin of 0.71;
    # inits 0-7 end at 0.26-0.43 with margins 0.20-0.79 (after 12 epochs: 0.36-0.56 and 0.00-0.64)
    cfg = PairTrainConfig(kind="siamese", max_len=16, epochs=30, lr=3e-3, threads=1, freeze_layers=0,
                          batch_groups=6, temperature=0.1, patience=None)
    model, info = train_siamese_encoder(texts, groups, tok, cfg, base=base, pad_id=pad)
    assert type(model.bert).__name__ == "MPNetModel" and not model.token_types
    assert info["loss_history"][-1] < 0.5 * info["loss_history"][0]
    same, sibling = _same_and_sibling(torch_embeddings(model, tok, 16, texts, pad), groups)
    assert same > sibling + 0.2, (same, sibling)
    out = tmp_path / "bundle"
    out.mkdir()
    assert export_siamese_encoder(model, out, tok, 16, texts, pad) <= 1e-4
    scorer = load_pair_scorer(out / "pair_model.onnx", sha256_file(out / "pair_model.onnx"), out / "pair_tokenizer.json",
                              {"kind": "siamese", "max_len": 16, "temperature": 0.1, "pad_id": pad,
                               "serialize": SerializeOptions().to_dict()})
    assert scorer.inputs == {"input_ids", "attention_mask"} and scorer.pad_id == 1
    scorer.batch_size = 2  # batches of uneven length: padded with the base's id
    ea, eb = torch_embeddings(model, tok, 16, a, pad), torch_embeddings(model, tok, 16, b, pad)
    np.testing.assert_allclose(scorer.logits(a, b), np.einsum("ij,ij->i", ea, eb) / 0.1, atol=1e-3)
    # refused, naming why: no folder, an architecture export-text does not read, no weights, another kind
    with pytest.raises(PairBaseError, match="does not exist"):
        read_pair_base(tmp_path / "nowhere")
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2Model"]}))
    with pytest.raises(PairBaseError, match="gpt2"):
        read_pair_base(gpt)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_bytes((folder / "config.json").read_bytes())
    with pytest.raises(PairBaseError, match="no weights"):
        read_pair_base(bare)
    with pytest.raises(ValueError, match="needs the siamese kind, not 'cross'"):
        PairOptions.from_recipe("cpu", "cpu", train={"kind": "cross", "base": str(folder)})


def test_siamese_kind_takes_its_own_training_on_top_of_the_recipe():
    o = PairOptions.from_recipe("cpu", "cpu", train={"kind": "siamese"})
    assert o.train.kind == "siamese" and o.train.freeze_layers == 0 and o.train.epochs == 12 and o.recipe == "cpu"
    assert PairOptions.from_recipe("cpu", "cpu", train={"kind": "siamese", "epochs": 2}).train.epochs == 2
    assert PairOptions.from_recipe("cpu", "cpu").train.kind == "cross"
    with pytest.raises(ValueError, match="kind must be one of"):
        PairOptions.from_recipe("cpu", "cpu", train={"kind": "triple"})


def test_labelled_matches_each_kind_needs():
    """The siamese kind is tried from 200 labelled training matches, the cross-encoder and known products from 400
    (benchmarks/README.md, "Pair stages below 400 matches"); a min_positives given counts for every kind."""
    assert PairOptions().matches_needed() == 400
    assert PairOptions.from_recipe("cpu", "cpu", train={"kind": "siamese"}).matches_needed() == 200
    assert PairOptions.from_recipe("cpu", "cpu", train={"kind": "known"}).matches_needed() == 400
    assert PairOptions().matches_needed("siamese") == 200
    given = PairOptions.from_recipe("cpu", "cpu", train={"kind": "siamese"}, min_positives=30)
    assert given.matches_needed() == 30 and given.matches_needed("known") == 30
    from pmatch_duckdb.training.pair_model import too_few_matches

    assert too_few_matches(PairOptions(), 400) is None
    assert too_few_matches(PairOptions(), 318).endswith("(the cross kind needs ≥ 400; pair_options.min_positives / "
                                                        "--pair-min-matches; --pair-kind siamese is tried from 200)")
    assert "siamese is tried" not in too_few_matches(PairOptions(), 199)  # no kind would be tried with these
    assert "siamese is tried" not in too_few_matches(given, 20)  # a floor the user set counts for every kind


def test_pair_training_uses_every_core_and_puts_torchs_threads_back():
    """Stage 1 leaves torch on one thread; the pair stage must not inherit it (it did, and trained on half of a
    2-core machine)."""
    from pmatch_duckdb.encoders.sessions import cpu_count
    from pmatch_duckdb.training.pair_model import torch_threads

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch_threads(None) as n:
            assert n == cpu_count() and torch.get_num_threads() == cpu_count()
        assert torch.get_num_threads() == 1
        with torch_threads(3):
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == 1
        tok = minilm_dir() / "tokenizer.json"
        _, info = train_cross_encoder(["COL title VAL a"] * 4, ["COL title VAL b"] * 4, np.array([1, 0, 1, 0.0]), tok,
                                      PairTrainConfig(max_len=8, epochs=1, batch_size=4, tiny_bert=TINY))
        assert info["threads"] == cpu_count() and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_whole_groups_sample_keeps_groups_whole_and_under_the_cap():
    from pmatch_duckdb.training.pair_model import whole_groups_sample

    groups = np.repeat(np.arange(50), np.tile([1, 2, 3, 4, 5], 10))  # 150 items in 50 groups
    for seed in range(3):
        keep = whole_groups_sample(groups, 40, seed)
        assert 30 <= keep.sum() <= 40
        for g in np.unique(groups):
            assert keep[groups == g].all() or not keep[groups == g].any()
    assert whole_groups_sample(np.zeros(10), 3, 0).all()  # one group over the cap: that group, not nothing
