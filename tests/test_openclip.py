"""Bring your own CLIP: export OpenCLIP weights to a ``clip`` bundle and use it from SQL by name.

A tiny randomly initialised OpenCLIP model (custom config registered with open_clip) is saved as a
checkpoint (.bin state dict and .safetensors), exported, and checked against open_clip itself: both ONNX
towers vs torch, the torch-free tokenizer vs open_clip's tokenizer, image preprocessing vs open_clip's
``preprocess``, and text-image dot products vs ``encode_text`` / ``encode_image``. The same for a tiny
SigLIP-style model whose tokenizer is a Hugging Face tokenizer (made here with the ``tokenizers`` library),
exported from a snapshot folder and with ``tokenizer=PATH``. Never downloads anything.

Needs the ``clip`` extra (torch 2.14.1 + torchvision + open_clip_torch + transformers): ``make test-clip``. Elsewhere
(the main dev venv has torch 2.13 and no open_clip) the whole module is skipped.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")
from open_clip.transform import PreprocessCfg, image_transform_v2  # noqa: E402

import pmatch_duckdb as pm  # noqa: E402
from pmatch_duckdb.bundles import find_bundle, sha256_file  # noqa: E402
from pmatch_duckdb.errors import ConfigError, ModelNotFoundError, PmatchError  # noqa: E402

TOL = 1e-4
ARCH = "pm-test-tiny-clip"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
LONG_TEXT = " ".join(f"Section {i}: stainless steel kettle KX-{i:03d}, 1.7 l, swivel base." for i in range(20))
TRICKY = [
    "a red dress",
    "A RED Dress!!!",
    "Crème brûlée ramekins – set of 6, porcelain, spülmaschinenfest",
    "Ключ гаечный комбинированный 13 мм",
    "無印良品 ステンレス 保温保冷マグ 350ml",
    "ΠΟΔΗΛΑΤΟ ΒΟΥΝΟΥ 29\" αλουμινίου",
    "Party pack 🎉🎈 balloons x50 🥳 + LED string lights ✨",
    "Tom &amp; Jerry &lt;3 &amp;amp; &#8364;5 &eacute;t&eacute;",
    "schÃ¶ne GrÃ¼ÃŸe â€” mojibake",
    "ﬁne ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ, ligatures and\u200bzero width",
    "don't WON'T it's we'll they're I'm you'd",
    "a_b-c.d,e!f?g(h)i[j]k{l}m/n\\o",
    "tabs\tand\nnewlines\r\n   and   spaces",
    "<start_of_text> literal special tokens <end_of_text>",
    "x",
    "12345678901234567890 3.14159 1,000,000",
    LONG_TEXT,
]


# --------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A randomly initialised tiny OpenCLIP model (registered under ``ARCH``)."""
    cfg_dir = tmp_path_factory.mktemp("openclip_cfg")
    (cfg_dir / f"{ARCH}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(cfg_dir / f"{ARCH}.json")
    return random_model(ARCH, seed=1234)


def random_model(arch: str, seed: int):
    """A randomly initialised registered architecture, every parameter perturbed: random init leaves some
    tensors at exact zeros/ones, and both towers must be non-trivial."""
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def checkpoints(tiny_model, tmp_path_factory) -> dict[str, Path]:
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("ckpt")
    sd = tiny_model.state_dict()
    torch.save(sd, d / "tiny.bin")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "tiny.safetensors"))
    return {"bin": d / "tiny.bin", "safetensors": d / "tiny.safetensors"}


@pytest.fixture(scope="module")
def clip_home(checkpoints, tmp_path_factory) -> Path:
    """A pmatch home with the tiny model exported twice: from the .bin and from the .safetensors."""
    from pmatch_duckdb.build.openclip import export_openclip

    home = tmp_path_factory.mktemp("clip_home")
    export_openclip(ARCH, checkpoints["bin"], "tiny-clip", home=home, log=lambda _: None)
    export_openclip(ARCH, checkpoints["safetensors"], "tiny-clip-st", home=home, log=lambda _: None)
    return home


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """PNG photos-ish of several sizes and aspect ratios (smaller and larger than the 64 px input)."""
    d = tmp_path_factory.mktemp("clip_images")
    rng = np.random.default_rng(3)
    for name, (w, h) in {"wide.png": (150, 90), "tall.png": (45, 131), "square.png": (64, 64),
                         "small.png": (20, 33), "odd.png": (101, 77)}.items():
        base = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
        noise = rng.integers(-20, 21, size=(h, w, 3))
        arr = np.clip(np.asarray(img, dtype=np.int64) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(d / name)
    Image.new("RGB", (80, 60), (220, 20, 30)).save(d / "red.png")
    return d


@pytest.fixture(scope="module")
def ccon(clip_home, images):
    c = pm.connect(home=clip_home, image_roots=[images])
    yield c
    c.close()


def ref_tokens(texts, clean: str = "lower"):
    return open_clip.tokenizer.SimpleTokenizer(clean=clean)(texts)


def torch_text(model, texts) -> np.ndarray:
    with torch.no_grad():
        return model.encode_text(ref_tokens(texts), normalize=True).numpy()


def torch_image(model, paths) -> np.ndarray:
    """open_clip's own inference preprocessing + encode_image."""
    pp = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    batch = torch.stack([pp(Image.open(p)) for p in paths])
    with torch.no_grad():
        return model.encode_image(batch, normalize=True).numpy()


def sql_vectors(con, sql: str, params=None) -> list[np.ndarray | None]:
    rows = con.execute(sql, params or []).fetchall()
    return [None if r[0] is None else np.asarray(r[0], dtype=np.float32) for r in rows]


def embed_in_sql(con, kind: str, model: str, values: list) -> list[np.ndarray | None]:
    """``pm_embed_<kind>(value, model)`` over ``values`` through SQL, in their order."""
    return sql_vectors(con, f"SELECT pm_embed_{kind}(v, '{model}') FROM unnest(?) WITH ORDINALITY AS u(v, i) "
                            "ORDER BY i", [values])


# --------------------------------------------------------------------------------------------- bundle

def test_bundle_layout_and_manifest(clip_home, checkpoints, tiny_model):
    b = find_bundle("tiny-clip", clip_home).verify()
    m = b.manifest
    assert (m["modality"], m["dim"], m["kind"], m["normalized"]) == ("clip", 32, "onnx-clip", True)
    assert set(m["files"]) == {"text.onnx", "image.onnx", "bpe_simple_vocab_16e6.txt.gz"}
    for rel, digest in m["files"].items():
        assert sha256_file(b.path / rel) == digest
    text, image = m["towers"]["text"], m["towers"]["image"]
    assert text["inputs"] == {"input_ids": "int64[batch,77]"}
    assert text["tokenizer"]["context_length"] == 77 and text["tokenizer"]["clean"] == "lower"
    assert image["inputs"] == {"pixels": "float32[batch,3,64,64]"}
    pre = image["preprocessing"]
    cfg = tiny_model.visual.preprocess_cfg
    assert pre["size"] == [64, 64] and pre["resize_mode"] == cfg["resize_mode"] == "shortest"
    assert pre["interpolation"] == cfg["interpolation"] == "bicubic"
    np.testing.assert_allclose(pre["mean"], cfg["mean"])
    np.testing.assert_allclose(pre["std"], cfg["std"])
    src = m["source"]
    assert src["arch"] == ARCH and src["model_cfg"] == TINY_CFG
    assert src["weights"] == str(checkpoints["bin"].resolve())
    assert src["weights_sha256"] == sha256_file(checkpoints["bin"])
    assert m["exporter"]["check"]["text_max_abs_diff"] <= TOL
    assert m["exporter"]["check"]["image_max_abs_diff"] <= TOL
    # listed with the other bundles
    con = pm.connect(home=clip_home, image_roots=[clip_home])
    try:
        rows = con.execute("SELECT name, modality, dim, verified FROM pm_models() ORDER BY name").fetchall()
    finally:
        con.close()
    assert rows == [("tiny-clip", "clip", 32, True), ("tiny-clip-st", "clip", 32, True)]


def test_tampered_bundle_is_refused(clip_home, tmp_path, images):
    import shutil

    from pmatch_duckdb.build.openclip import export_openclip  # noqa: F401  (the clip extra is there)

    home = tmp_path / "home"
    shutil.copytree(clip_home / "models" / "tiny-clip", home / "models" / "tiny-clip")
    with open(home / "models" / "tiny-clip" / "image.onnx", "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    con = pm.connect(home=home, image_roots=[images])
    try:
        with pytest.raises(duckdb.Error, match="sha256 mismatch"):
            con.execute("SELECT pm_embed_image('red.png', 'tiny-clip')").fetchall()
    finally:
        con.close()


# --------------------------------------------------------------------------------------------- towers

def test_text_tower_matches_torch(clip_home, tiny_model):
    import onnxruntime as ort

    ids = ref_tokens(TRICKY)
    sess = ort.InferenceSession(str(clip_home / "models" / "tiny-clip" / "text.onnx"),
                                providers=["CPUExecutionProvider"])
    got = sess.run(["embedding"], {"input_ids": ids.numpy()})[0]
    with torch.no_grad():
        want = tiny_model.encode_text(ids, normalize=True).numpy()
    assert got.shape == (len(TRICKY), 32)
    assert np.abs(got - want).max() <= TOL
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # the texts really give different vectors (the model is not degenerate)
    assert len(np.unique(got.round(4), axis=0)) == len(set(TRICKY))


def test_image_tower_matches_torch_any_batch(clip_home, tiny_model):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(clip_home / "models" / "tiny-clip" / "image.onnx"),
                                providers=["CPUExecutionProvider"])
    for n in (1, 3, 7):
        px = torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(n))
        got = sess.run(["embedding"], {"pixels": px.numpy()})[0]
        with torch.no_grad():
            want = tiny_model.encode_image(px, normalize=True).numpy()
        assert got.shape == (n, 32)
        assert np.abs(got - want).max() <= TOL
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_bin_and_safetensors_exports_agree(ccon):
    a = sql_vectors(ccon, "SELECT pm_embed_text(t, 'tiny-clip') FROM unnest(?) AS u(t)", [TRICKY])
    b = sql_vectors(ccon, "SELECT pm_embed_text(t, 'tiny-clip-st') FROM unnest(?) AS u(t)", [TRICKY])
    np.testing.assert_allclose(np.stack(a), np.stack(b), atol=1e-6)


# --------------------------------------------------------------------------------------------- tokenizer

@pytest.mark.parametrize("clean", ["lower", "whitespace", "canonicalize"])
def test_tokenizer_parity_with_open_clip(clean):
    from pmatch_duckdb.encoders.clip_tokenizer import ClipTokenizer

    ours = ClipTokenizer(open_clip.tokenizer.default_bpe(), context_length=77, clean=clean)
    want = ref_tokens(TRICKY, clean).numpy()
    got = ours(TRICKY)
    assert got.dtype == np.int64 and got.shape == want.shape == (len(TRICKY), 77)
    for text, g, w in zip(TRICKY, got, want, strict=True):
        assert g.tolist() == w.tolist(), text
    # the long text really is truncated: full context, ending with <end_of_text>
    long_row = got[TRICKY.index(LONG_TEXT)]
    assert len(ours.encode(LONG_TEXT)) > 100
    assert (long_row != 0).all() and long_row[-1] == ours.eot_id and long_row[0] == ours.sot_id


def test_tokenizer_parity_other_context_length():
    from pmatch_duckdb.encoders.clip_tokenizer import ClipTokenizer

    ours = ClipTokenizer(open_clip.tokenizer.default_bpe(), context_length=16)
    want = open_clip.tokenizer.SimpleTokenizer(context_length=16)(TRICKY).numpy()
    assert np.array_equal(ours(TRICKY), want)


def test_long_text_truncation_in_sql(ccon):
    """Beyond 77 tokens nothing changes the embedding (open_clip truncates the same way)."""
    a, b = embed_in_sql(ccon, "text", "tiny-clip", [LONG_TEXT, LONG_TEXT + " and then some volcanoes"])
    np.testing.assert_allclose(a, b, atol=1e-6)


# --------------------------------------------------------------------------------------------- SQL

def test_named_text_form_matches_open_clip(ccon, tiny_model):
    assert ccon.execute("SELECT typeof(pm_embed_text('a red dress', 'tiny-clip'))").fetchall() == [("FLOAT[]",)]
    got = embed_in_sql(ccon, "text", "tiny-clip", TRICKY)
    got = np.stack(got)
    assert got.shape == (len(TRICKY), 32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.abs(got - torch_text(tiny_model, TRICKY)).max() <= TOL
    # cast to a fixed size where one is needed
    (v,), = ccon.execute("SELECT pm_embed_text('a red dress', 'tiny-clip')::FLOAT[32]").fetchall()
    assert len(v) == 32


def test_named_image_form_matches_open_clip_preprocess(ccon, tiny_model, images):
    names = ["wide.png", "tall.png", "square.png", "small.png", "odd.png", "red.png"]
    got = embed_in_sql(ccon, "image", "tiny-clip", names)
    want = torch_image(tiny_model, [images / n for n in names])
    got = np.stack(got)
    assert got.shape == (len(names), 32)
    assert np.abs(got - want).max() <= TOL
    # bytes in, same vector out
    blob = (images / "odd.png").read_bytes()
    (v,), = ccon.execute("SELECT pm_embed_image(?::BLOB, 'tiny-clip')", [blob]).fetchall()
    np.testing.assert_allclose(np.asarray(v), got[names.index("odd.png")], atol=1e-6)
    assert ccon.execute("SELECT typeof(pm_embed_image('red.png', 'tiny-clip'))").fetchall() == [("FLOAT[]",)]


def test_preprocessing_pixels_match_open_clip(clip_home, tiny_model, images):
    """Pixel-level: our Pillow preprocessing gives open_clip's tensors, for every resize mode."""
    from pmatch_duckdb.bundles import Bundle
    from pmatch_duckdb.encoders.clip import ClipImageEncoder

    base = find_bundle("tiny-clip", clip_home)
    for mode, size in (("shortest", 64), ("longest", 64), ("squash", 64), ("shortest", (48, 64)),
                       ("longest", (64, 40))):
        manifest = json.loads(json.dumps(base.manifest))
        pre = manifest["towers"]["image"]["preprocessing"]
        pre.update(resize_mode=mode, size=list(size) if isinstance(size, tuple) else [size, size], fill_color=7)
        enc = ClipImageEncoder(Bundle(base.path, manifest))
        cfg = PreprocessCfg(size=size, resize_mode=mode, fill_color=7, mean=tuple(pre["mean"]),
                                      std=tuple(pre["std"]), interpolation="bicubic")
        ref = image_transform_v2(cfg, is_train=False)
        for p in sorted(images.iterdir()):
            img = Image.open(p).convert("RGB")
            want = ref(img).numpy()
            got = enc.preprocess(img)
            assert got.shape == want.shape, (mode, size, p.name)
            assert np.abs(got - want).max() <= 1e-5, (mode, size, p.name)


def test_text_image_scores_consistent_with_open_clip(ccon, tiny_model, images):
    """Text -> image search: SQL dot products of the named forms equal open_clip's encode_text @ encode_image.T."""
    texts = ["a red dress", "a blue shirt", "stainless steel kettle", "🎉 party"]
    names = ["red.png", "wide.png", "tall.png", "square.png"]
    ccon.execute("CREATE OR REPLACE TEMP TABLE imgs AS SELECT p, pm_embed_image(p, 'tiny-clip') AS v "
                 "FROM unnest(?) AS u(p)", [names])
    rows = ccon.execute(
        "SELECT t, p, list_dot_product(pm_embed_text(t, 'tiny-clip'), v) FROM unnest(?) AS q(t), imgs",
        [texts]).fetchall()
    got = {(t, p): s for t, p, s in rows}
    want = torch_text(tiny_model, texts) @ torch_image(tiny_model, [images / n for n in names]).T
    for i, t in enumerate(texts):
        for j, p in enumerate(names):
            assert abs(got[(t, p)] - want[i, j]) <= TOL
    # the best image per text is the same as open_clip's
    best = ccon.execute(
        "SELECT t, arg_max(p, list_cosine_similarity(pm_embed_text(t, 'tiny-clip'), v)) "
        "FROM unnest(?) AS q(t), imgs GROUP BY t", [texts]).fetchall()
    assert dict(best) == {t: names[int(np.argmax(want[i]))] for i, t in enumerate(texts)}


COLOURS = {"red": (215, 35, 35), "blue": (35, 70, 215), "green": (35, 165, 65), "yellow": (235, 210, 40),
           "black": (25, 25, 25)}


def _garment_photo(rgb: tuple[int, int, int], rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A garment-coloured blob on a light background, with noise (a stand-in for a product photo)."""
    w, h = size
    arr = np.full((h, w, 3), 235, dtype=np.int64)
    x0, y0 = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
    arr[y0:y0 + 3 * h // 4, x0:x0 + 3 * w // 4] = rgb
    arr += rng.integers(-25, 26, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def test_text_to_image_search_with_trained_weights(tiny_model, tmp_path):
    """'a red dress' finds the red dress photo: a tiny CLIP trained in the test, exported, searched in SQL."""
    from pmatch_duckdb.build.openclip import export_openclip

    model = random_model(ARCH, seed=7).train()
    pp = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    tokens = ref_tokens([f"a {c} dress" for c in names] + [f"{c} dress, product photo" for c in names])
    for step in range(150):  # contrastive steps on fresh photos (about 30 s on 2 cores)
        batch = torch.stack([pp(_garment_photo(COLOURS[c], rng, (int(rng.integers(48, 120)), int(rng.integers(48, 120)))))
                             for c in names])
        txt = tokens[(step % 2) * len(names):(step % 2 + 1) * len(names)]
        img_f = model.encode_image(batch, normalize=True)
        txt_f = model.encode_text(txt, normalize=True)
        logits = model.logit_scale.exp() * img_f @ txt_f.T
        target = torch.arange(len(names))
        loss = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ckpt = tmp_path / "colour-clip.bin"
    torch.save(model.state_dict(), ckpt)
    home = tmp_path / "home"
    export_openclip(ARCH, ckpt, "colour-clip", home=home, log=lambda _: None)
    photos = tmp_path / "photos"
    photos.mkdir()
    test_rng = np.random.default_rng(99)  # photos never seen in training, in shuffled order
    order = [names[i] for i in test_rng.permutation(len(names))]
    for c in order:
        _garment_photo(COLOURS[c], test_rng, (int(test_rng.integers(50, 200)), int(test_rng.integers(50, 200)))
                       ).save(photos / f"{c}-dress.png")
    con = pm.connect(home=home, image_roots=[photos])
    try:
        con.execute("CREATE TABLE catalog AS SELECT 'photos/' || c || '-dress.png' AS sku, ? || '/' || c || '-dress.png' "
                    "AS photo FROM unnest(?) AS u(c)", [str(photos), order])
        con.execute("CREATE TABLE vecs AS SELECT sku, pm_embed_image(photo, 'colour-clip') AS v FROM catalog")
        got = dict(con.execute(
            "SELECT q, arg_max(sku, list_cosine_similarity(pm_embed_text(q, 'colour-clip'), v)) "
            "FROM unnest(?) AS t(q), vecs GROUP BY q", [[f"a {c} dress" for c in names]]).fetchall())
    finally:
        con.close()
    assert got == {f"a {c} dress": f"photos/{c}-dress.png" for c in names}, got


def test_named_images_pooling_and_nulls(ccon, tiny_model, images):
    (v,), = ccon.execute("SELECT pm_embed_images(['red.png', 'nope.png', 'wide.png'], 'tiny-clip')").fetchall()
    each = torch_image(tiny_model, [images / "red.png", images / "wide.png"])
    pooled = each.sum(0) / np.linalg.norm(each.sum(0))
    np.testing.assert_allclose(np.asarray(v), pooled, atol=TOL)
    row = ccon.execute("SELECT pm_embed_text(NULL, 'tiny-clip') IS NULL, pm_embed_text('  ', 'tiny-clip') IS NULL, "
                       "pm_embed_text('x', NULL) IS NULL, pm_embed_image('nope.png', 'tiny-clip') IS NULL, "
                       "pm_embed_images(['nope.png'], 'tiny-clip') IS NULL").fetchall()
    assert row == [(True, True, True, True, True)]


def test_model_column_mixes_models(ccon):
    """The model may vary per row: each row is embedded by its own model."""
    rows = ccon.execute("SELECT m, pm_embed_text('a red dress', m) FROM (VALUES ('tiny-clip'), ('tiny-clip-st'), "
                        "(NULL)) AS v(m) ORDER BY m NULLS LAST").fetchall()
    assert rows[2][1] is None
    np.testing.assert_allclose(rows[0][1], rows[1][1], atol=1e-6)


def test_unknown_model_name_is_a_clear_error(ccon):
    with pytest.raises(duckdb.Error, match=r"unknown model 'no-such-clip'.*tiny-clip.*export-openclip"):
        ccon.execute("SELECT pm_embed_text('a red dress', 'no-such-clip')").fetchall()
    with pytest.raises(duckdb.Error, match="unknown model 'no-such-clip'"):
        ccon.execute("SELECT pm_embed_image('red.png', 'no-such-clip')").fetchall()
    with pytest.raises(duckdb.Error, match="invalid model name"):
        ccon.execute("SELECT pm_embed_text('a red dress', '../etc')").fetchall()
    with pytest.raises(duckdb.Error, match="expects VARCHAR"):
        ccon.execute("SELECT pm_embed_image(42, 'tiny-clip')").fetchall()
    # the connection is still usable afterwards
    assert ccon.execute("SELECT pm_embed_text('ok', 'tiny-clip') IS NOT NULL").fetchall() == [(True,)]


def test_clip_as_default_models(clip_home, images, ccon):
    """With a CLIP bundle as the connection's defaults, the one-argument forms use it, typed FLOAT[dim]."""
    con = pm.connect(home=clip_home, image_roots=[images], text_model="tiny-clip", image_model="tiny-clip")
    try:
        row = con.execute("SELECT typeof(pm_embed_text('a red dress')), typeof(pm_embed_image('red.png')), "
                          "typeof(pm_embed_images(['red.png']))").fetchall()
        assert row == [("FLOAT[32]", "FLOAT[32]", "FLOAT[32]")]
        (a, b), = con.execute("SELECT pm_embed_text('a red dress'), pm_embed_image('red.png')").fetchall()
    finally:
        con.close()
    (c, d), = ccon.execute("SELECT pm_embed_text('a red dress', 'tiny-clip'), "
                           "pm_embed_image('red.png', 'tiny-clip')").fetchall()
    np.testing.assert_allclose(a, c, atol=1e-6)
    np.testing.assert_allclose(b, d, atol=1e-6)
    # an index records the CLIP bundle as its text and image encoder
    from pmatch_duckdb.settings import Settings
    from pmatch_duckdb.store import encoder_identity

    ident = encoder_identity(Settings.create(home=clip_home, image_roots=[images], text_model="tiny-clip",
                                             image_model="tiny-clip"))
    assert ident["text_model"] == ident["image_model"] == "tiny-clip"
    assert ident["text_dim"] == ident["image_dim"] == "32"


def test_runtime_needs_neither_torch_nor_open_clip(clip_home, images, tiny_model):
    """Query time only reads ONNX + JSON + the BPE vocabulary: embed with torch and open_clip unimportable."""
    script = textwrap.dedent(f"""
        import sys
        for mod in ("torch", "open_clip", "torchvision", "transformers"):
            sys.modules[mod] = None   # any import of these now fails
        import json
        import pmatch_duckdb as pm
        con = pm.connect(home={str(clip_home)!r}, image_roots=[{str(images)!r}])
        (t, i), = con.execute("SELECT pm_embed_text('a red dress', 'tiny-clip'), "
                              "pm_embed_image('red.png', 'tiny-clip')").fetchall()
        print(json.dumps([t, i]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    t, i = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(t, torch_text(tiny_model, ["a red dress"])[0], atol=TOL)
    np.testing.assert_allclose(i, torch_image(tiny_model, [images / "red.png"])[0], atol=TOL)


# --------------------------------------------------------------------------------------------- export errors

def test_missing_weights_path_is_a_clear_error(tmp_path):
    from click.testing import CliRunner

    from pmatch_duckdb.build.openclip import export_openclip
    from pmatch_duckdb.cli import main

    missing = tmp_path / "nowhere" / "open_clip_pytorch_model.bin"
    with pytest.raises(ModelNotFoundError, match=str(missing)):
        export_openclip("ViT-B-32", missing, "my-clip", home=tmp_path / "home")
    res = CliRunner().invoke(main, ["models", "export-openclip", "--arch", "ViT-B-32", "--weights", str(missing),
                                    "--name", "my-clip", "--home", str(tmp_path / "home")])
    assert res.exit_code != 0
    assert str(missing) in res.output and "never downloads" in res.output
    assert not (tmp_path / "home" / "models" / "my-clip").exists()


def test_bad_inputs_are_clear_errors(tmp_path, checkpoints, tiny_model):
    from pmatch_duckdb.build.openclip import ExportError, export_openclip

    home = tmp_path / "home"
    with pytest.raises(ConfigError, match="unknown open_clip architecture 'ViT-Nope'"):
        export_openclip("ViT-Nope", checkpoints["bin"], "x", home=home)
    with pytest.raises(ConfigError, match="hf-hub"):
        export_openclip("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", checkpoints["bin"], "x", home=home)
    with pytest.raises(ModelNotFoundError, match="Hugging Face tokenizer 'timm/ViT-B-16-SigLIP'"):
        export_openclip("ViT-B-16-SigLIP", checkpoints["bin"], "x", home=home)
    with pytest.raises(ConfigError, match="no pretrained tag"):
        export_openclip(ARCH, checkpoints["bin"], "x", home=home, pretrained_tag="laion9000")
    with pytest.raises(ConfigError, match="invalid model name"):
        export_openclip(ARCH, checkpoints["bin"], "../x", home=home)
    with pytest.raises(ConfigError, match="default model"):
        export_openclip(ARCH, checkpoints["bin"], "minilm-l6-v2", home=home)
    txt = tmp_path / "weights.txt"
    txt.write_text("nope")
    with pytest.raises(ConfigError, match="expected one of"):
        export_openclip(ARCH, txt, "x", home=home)
    # weights of another architecture
    with pytest.raises(ExportError, match="do not fit architecture 'ViT-S-32'"):
        export_openclip("ViT-S-32", checkpoints["bin"], "x", home=home)
    assert not (home / "models" / "x").exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_objects_are_never_loaded(tmp_path):
    from pmatch_duckdb.build.openclip import ExportError, export_openclip

    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    with pytest.raises(ExportError, match="weights_only=True"):
        export_openclip(ARCH, bad, "x", home=tmp_path / "home")
    not_sd = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], not_sd)
    with pytest.raises(ExportError, match="state dict"):
        export_openclip(ARCH, not_sd, "x", home=tmp_path / "home")


def test_existing_bundle_needs_force_and_folder_weights(tmp_path, checkpoints, tiny_model):
    """--force replaces a bundle; --weights may be a folder (a local snapshot) with open_clip_config.json."""
    from pmatch_duckdb.build.openclip import export_openclip

    home = tmp_path / "home"
    export_openclip(ARCH, checkpoints["safetensors"], "c", home=home, log=lambda _: None)
    with pytest.raises(ConfigError, match="already exists"):
        export_openclip(ARCH, checkpoints["bin"], "c", home=home)
    snap = tmp_path / "snapshot"
    snap.mkdir()
    (snap / "open_clip_pytorch_model.bin").write_bytes(checkpoints["bin"].read_bytes())
    (snap / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                                                   "interpolation": "bilinear"}}))
    export_openclip(None, snap, "c", home=home, force=True, log=lambda _: None)
    m = find_bundle("c", home).verify().manifest
    assert m["source"]["weights"] == str((snap / "open_clip_pytorch_model.bin").resolve())
    pre = m["towers"]["image"]["preprocessing"]
    assert (pre["mean"], pre["std"], pre["interpolation"]) == ([0.5] * 3, [0.5] * 3, "bilinear")


def test_cli_export_and_list(tmp_path, checkpoints):
    from click.testing import CliRunner

    from pmatch_duckdb.cli import main

    home = tmp_path / "home"
    res = CliRunner().invoke(main, ["models", "export-openclip", "--arch", ARCH, "--weights",
                                    str(checkpoints["bin"]), "--name", "cli-clip", "--home", str(home),
                                    "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25",
                                    "--resize-mode", "squash"])
    assert res.exit_code == 0, res.output
    pre = find_bundle("cli-clip", home).manifest["towers"]["image"]["preprocessing"]
    assert (pre["mean"], pre["std"], pre["resize_mode"]) == ([0.5] * 3, [0.25] * 3, "squash")
    res = CliRunner().invoke(main, ["models", "list", "--home", str(home)])
    assert res.exit_code == 0 and "cli-clip" in res.output and "clip" in res.output
    res = CliRunner().invoke(main, ["models", "export-openclip", "--arch", ARCH, "--weights",
                                    str(checkpoints["bin"]), "--name", "cli-clip", "--home", str(home)])
    assert res.exit_code != 0 and "already exists" in res.output


def test_wrong_kind_of_model_for_the_function(tmp_path, images):
    """A text-only bundle cannot embed images (and the reverse): a clear error, not garbage."""
    from pmatch_duckdb.errors import ConfigError as CE

    assert issubclass(CE, PmatchError)
    con = pm.connect(home=tmp_path / "empty", image_roots=[images])
    try:
        with pytest.raises(duckdb.Error, match="unknown model 'tiny-clip'.*none"):
            con.execute("SELECT pm_embed_text('x', 'tiny-clip')").fetchall()
    finally:
        con.close()


# --------------------------------------------------------------------------------------------- HF tokenizers (SigLIP)
# SigLIP-style models: open_clip's own text transformer (no causal mask, last-token pooling, projection bias)
# with a Hugging Face tokenizer (text_cfg.hf_tokenizer_name). The tokenizers are made here, tiny, with the
# tokenizers library and saved with transformers: a T5 one as SigLIP's (sentencepiece Unigram, <pad>=0,
# </s>=1 appended) and a BERT WordPiece one as CLIPA's ([CLS] ... [SEP], strip_sep_token).

SIG_ARCH = "pm-test-tiny-siglip"  # hf_tokenizer_name: the local tokenizer folder
SIG_HUB_ARCH = "pm-test-tiny-siglip-hub"  # hf_tokenizer_name: a hub id (nothing is downloaded)
SIG_HUB_NAME = "timm/pm-test-tiny-siglip"
SIG_TIMM_ARCH = "pm-test-tiny-siglip-timm"
SIG_CTX = 16
SIG_CORPUS = [
    "a photo of a red dress", "stainless steel kettle with swivel base 1.7 l", "crème brûlée ramekins set of six",
    "party balloons and led string lights", "無印良品 ステンレス 保温保冷マグ", "ключ гаечный комбинированный",
    "mountain bike aluminium 29 inch", "porcelain dishwasher safe", "a blue shirt", "tom and jerry",
] * 5
SIG_PP = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "resize_mode": "squash"}


def sig_cfg(hf_tokenizer_name: str, timm: bool = False) -> dict:
    """ViT-B-16-SigLIP's config, shrunk (vision: open_clip's ViT, or a tiny timm ViT with MAP pooling)."""
    vision = ({"image_size": 160, "timm_model_name": "test_vit", "timm_model_pretrained": False,
               "timm_pool": "map", "timm_proj": "none"} if timm else
              {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16})
    return {
        "embed_dim": 64 if timm else 32,  # a timm tower without projection: its own width
        "init_logit_bias": -10,
        "custom_text": True,
        "vision_cfg": vision,
        "text_cfg": {"context_length": SIG_CTX, "vocab_size": 128, "hf_tokenizer_name": hf_tokenizer_name,
                     "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 64, "heads": 2, "layers": 2,
                     "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6}},
    }


def make_t5_tokenizer(dest: Path, added: int = 0) -> Path:
    """SigLIP's kind of tokenizer (T5: Unigram, <pad>=0 </s>=1 <unk>=2, </s> appended), trained on SIG_CORPUS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(SIG_CORPUS, trainers.UnigramTrainer(
        vocab_size=100, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    vocab = [(piece, score) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    t5 = T5Tokenizer(vocab=vocab, extra_ids=0)
    if added:
        t5.add_tokens([f"added{i}" for i in range(added)])
    t5.save_pretrained(dest)
    return dest


def make_bert_tokenizer(dest: Path) -> Path:
    """CLIPA's kind of tokenizer (BERT WordPiece, lower-cased, [CLS] ... [SEP]), wrapped as a fast tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(SIG_CORPUS, trainers.WordPieceTrainer(vocab_size=120, special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def hf_tokenizers(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hf_tokenizers")
    return {"t5": make_t5_tokenizer(d / "t5"), "bert": make_bert_tokenizer(d / "bert")}


@pytest.fixture(scope="module")
def sig_model(hf_tokenizers, tmp_path_factory):
    """A tiny SigLIP-style model, its architecture registered twice (local tokenizer folder / hub id)."""
    cfg_dir = tmp_path_factory.mktemp("siglip_cfg")
    for arch, name in ((SIG_ARCH, str(hf_tokenizers["t5"])), (SIG_HUB_ARCH, SIG_HUB_NAME)):
        (cfg_dir / f"{arch}.json").write_text(json.dumps(sig_cfg(name)))
        open_clip.add_model_config(cfg_dir / f"{arch}.json")
    return random_model(SIG_ARCH, seed=4321)


@pytest.fixture(scope="module")
def sig_ckpt(sig_model, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("siglip_ckpt") / "tiny-siglip.bin"
    torch.save(sig_model.state_dict(), p)
    return p


@pytest.fixture(scope="module")
def sig_snapshot(sig_model, hf_tokenizers, tmp_path_factory) -> Path:
    """A local Hugging Face snapshot as timm/ViT-B-16-SigLIP's: config, weights and tokenizer files in one folder."""
    import shutil

    from safetensors.torch import save_file

    snap = tmp_path_factory.mktemp("siglip_snapshot")
    save_file({k: v.contiguous() for k, v in sig_model.state_dict().items()}, str(snap / "open_clip_model.safetensors"))
    (snap / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": sig_cfg(SIG_HUB_NAME), "preprocess_cfg": SIG_PP}))
    for f in hf_tokenizers["t5"].iterdir():
        shutil.copy(f, snap / f.name)
    return snap


@pytest.fixture(scope="module")
def sig_home(sig_snapshot, sig_ckpt, hf_tokenizers, tmp_path_factory) -> Path:
    """The tiny SigLIP exported from the snapshot folder, and from a checkpoint file with tokenizer=PATH."""
    from pmatch_duckdb.build.openclip import export_openclip

    home = tmp_path_factory.mktemp("siglip_home")
    export_openclip(None, sig_snapshot, "sig-snap", home=home, log=lambda _: None)
    export_openclip(SIG_HUB_ARCH, sig_ckpt, "sig-tok", home=home, tokenizer=hf_tokenizers["t5"],
                    preprocess=SIG_PP, log=lambda _: None)
    return home


@pytest.fixture(scope="module")
def scon(sig_home, images):
    c = pm.connect(home=sig_home, image_roots=[images])
    yield c
    c.close()


def sig_ref_tokens(texts, snapshot: Path):
    """open_clip's own tokenizer for the snapshot (get_tokenizer('local-dir:...') -> HFTokenizer)."""
    return open_clip.get_tokenizer(f"local-dir:{snapshot}")(texts)


def sig_torch_image(model, paths) -> np.ndarray:
    pp = image_transform_v2(PreprocessCfg(size=model.visual.image_size, **SIG_PP), is_train=False)
    batch = torch.stack([pp(Image.open(p)) for p in paths])
    with torch.no_grad():
        return model.encode_image(batch, normalize=True).numpy()


def test_siglip_bundle_manifest(sig_home, sig_snapshot, hf_tokenizers):
    b = find_bundle("sig-snap", sig_home).verify()
    m = b.manifest
    assert (m["modality"], m["dim"], m["kind"], m["normalized"]) == ("clip", 32, "onnx-clip", True)
    assert set(m["files"]) == {"text.onnx", "image.onnx", "tokenizer.json"}
    for rel, digest in m["files"].items():
        assert sha256_file(b.path / rel) == digest
    text = m["towers"]["text"]
    assert text["inputs"] == {"input_ids": f"int64[batch,{SIG_CTX}]"}
    tok = text["tokenizer"]
    assert tok["type"] == "hf-tokenizers-json" and tok["file"] == "tokenizer.json"
    assert (tok["context_length"], tok["clean"], tok["strip_sep_token"], tok["sep_id"]) == (SIG_CTX, "canonicalize",
                                                                                             False, None)
    assert (tok["pad_id"], tok["eos_id"], tok["padding_side"], tok["truncation_side"]) == (0, 1, "right", "right")
    assert tok["class"] == "T5Tokenizer" and tok["hf_tokenizer_name"] == SIG_HUB_NAME
    assert tok["source"] == str(sig_snapshot.resolve())
    # the JSON itself truncates and pads to the context length
    js = json.loads((b.path / "tokenizer.json").read_text())
    assert js["truncation"]["max_length"] == SIG_CTX and js["padding"]["strategy"] == {"Fixed": SIG_CTX}
    pre = m["towers"]["image"]["preprocessing"]
    assert (pre["size"], pre["mean"], pre["std"], pre["resize_mode"]) == ([64, 64], [0.5] * 3, [0.5] * 3, "squash")
    assert m["source"]["weights"] == str((sig_snapshot / "open_clip_model.safetensors").resolve())
    assert m["exporter"]["check"]["text_max_abs_diff"] <= TOL
    assert m["exporter"]["check"]["image_max_abs_diff"] <= TOL
    tok2 = find_bundle("sig-tok", sig_home).verify().manifest["towers"]["text"]["tokenizer"]
    assert tok2["source"] == str(hf_tokenizers["t5"].resolve())


def test_siglip_tokenizer_parity_with_open_clip(sig_home, sig_snapshot, sig_model):
    """The bundle's torch-free tokenizer gives open_clip's ids (from the snapshot, and from the registered arch)."""
    from pmatch_duckdb.encoders.clip import ClipTextEncoder

    enc = ClipTextEncoder(find_bundle("sig-snap", sig_home).verify())
    got = enc.tokenize(TRICKY)
    want = sig_ref_tokens(TRICKY, sig_snapshot).numpy()
    assert got.dtype == np.int64 and got.shape == want.shape == (len(TRICKY), SIG_CTX)
    for text, g, w in zip(TRICKY, got, want, strict=True):
        assert g.tolist() == w.tolist(), text
    assert np.array_equal(got, open_clip.get_tokenizer(SIG_ARCH)(TRICKY).numpy())
    # short text: ids, </s>, then <pad>; long text: truncated to the context, </s> kept last
    short = got[TRICKY.index("x")]
    assert short.tolist()[short.tolist().index(1) + 1:] == [0] * (SIG_CTX - short.tolist().index(1) - 1)
    long_row = got[TRICKY.index(LONG_TEXT)]
    assert (long_row != 0).all() and long_row[-1] == 1
    # canonicalize: case and punctuation do not matter
    a, b = enc.tokenize(["a red dress", "A RED Dress!!!"])
    assert a.tolist() == b.tolist()


def test_siglip_towers_match_torch(sig_home, sig_model, sig_snapshot):
    import onnxruntime as ort

    ids = sig_ref_tokens(TRICKY, sig_snapshot)
    path = sig_home / "models" / "sig-snap"
    sess = ort.InferenceSession(str(path / "text.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["embedding"], {"input_ids": ids.numpy()})[0]
    with torch.no_grad():
        want = sig_model.encode_text(ids, normalize=True).numpy()
    assert got.shape == (len(TRICKY), 32) and np.abs(got - want).max() <= TOL
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert len(np.unique(got.round(4), axis=0)) == len(np.unique(ids.numpy(), axis=0))
    sess = ort.InferenceSession(str(path / "image.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 4):
        px = torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(n))
        got = sess.run(["embedding"], {"pixels": px.numpy()})[0]
        with torch.no_grad():
            want = sig_model.encode_image(px, normalize=True).numpy()
        assert got.shape == (n, 32) and np.abs(got - want).max() <= TOL


def test_siglip_in_sql_matches_open_clip(scon, sig_model, sig_snapshot, images):
    got = np.stack(embed_in_sql(scon, "text", "sig-snap", TRICKY))
    with torch.no_grad():
        want = sig_model.encode_text(sig_ref_tokens(TRICKY, sig_snapshot), normalize=True).numpy()
    assert got.shape == (len(TRICKY), 32) and np.abs(got - want).max() <= TOL
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # the same weights and tokenizer exported from a checkpoint file with tokenizer=PATH: the same vectors
    other = np.stack(embed_in_sql(scon, "text", "sig-tok", TRICKY))
    np.testing.assert_allclose(other, got, atol=1e-6)
    names = ["wide.png", "tall.png", "square.png", "small.png", "red.png"]
    img = np.stack(embed_in_sql(scon, "image", "sig-snap", names))
    assert img.shape == (len(names), 32)
    assert np.abs(img - sig_torch_image(sig_model, [images / n for n in names])).max() <= TOL
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    # text -> image scores as open_clip's
    (s,), = scon.execute("SELECT list_dot_product(pm_embed_text('a red dress', 'sig-snap'), "
                         "pm_embed_image('red.png', 'sig-snap'))").fetchall()
    assert abs(s - float(want[TRICKY.index("a red dress")] @ img[names.index("red.png")])) <= TOL


def test_siglip_runtime_needs_neither_torch_nor_transformers(sig_home, sig_model, sig_snapshot, images):
    script = textwrap.dedent(f"""
        import sys
        for mod in ("torch", "open_clip", "torchvision", "transformers", "timm"):
            sys.modules[mod] = None
        import json
        import pmatch_duckdb as pm
        con = pm.connect(home={str(sig_home)!r}, image_roots=[{str(images)!r}])
        (t,), = con.execute("SELECT pm_embed_text('Crème brûlée 🎉 ramekins', 'sig-snap')").fetchall()
        print(json.dumps(t))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    t = json.loads(out.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        want = sig_model.encode_text(sig_ref_tokens(["Crème brûlée 🎉 ramekins"], sig_snapshot), normalize=True)
    np.testing.assert_allclose(t, want[0].numpy(), atol=TOL)


@pytest.mark.parametrize("flavour,ctx,options", [
    ("t5", 16, {"clean": "canonicalize"}),  # SigLIP
    ("t5", 64, {"clean": "canonicalize"}),
    ("t5", 8, {"clean": "lower", "padding_side": "left", "truncation_side": "left"}),  # AutoTokenizer kwargs
    ("bert", 12, {"strip_sep_token": True}),  # CLIPA: HFTokenizer's default clean ('whitespace'), [SEP] -> 0
    ("bert", 32, {"clean": "whitespace"}),
])
def test_hf_tokenizer_parity_with_open_clip(flavour, ctx, options, hf_tokenizers, tmp_path):
    """The exported tokenizers JSON vs open_clip's HFTokenizer, for several tokenizers and options."""
    from pmatch_duckdb.build.openclip import HF_TOKENIZER_OPTIONS, export_hf_tokenizer, load_hf_tokenizer
    from pmatch_duckdb.encoders.clip_hf_tokenizer import HFJsonTokenizer

    path = hf_tokenizers[flavour]
    clean, strip = options.get("clean", "whitespace"), options.get("strip_sep_token", False)
    loaded = load_hf_tokenizer(path, ctx, clean, strip, {k: v for k, v in options.items()
                                                         if k not in HF_TOKENIZER_OPTIONS})
    spec = export_hf_tokenizer(loaded, tmp_path / "tokenizer.json", clean)
    ours = HFJsonTokenizer.from_spec(tmp_path / "tokenizer.json", spec)
    ref = open_clip.tokenizer.HFTokenizer(str(path), context_length=ctx, **options)  # as open_clip builds it
    texts = [*TRICKY, "", "[SEP] [CLS] </s> <pad> literal specials", "ALL CAPS Ünïcödé"]
    got, want = ours(texts), ref(texts).numpy()
    assert got.dtype == np.int64 and got.shape == want.shape == (len(texts), ctx)
    for text, g, w in zip(texts, got, want, strict=True):
        assert g.tolist() == w.tolist(), text
    assert spec["padding_side"] == options.get("padding_side", "right")
    long_row = got[texts.index(LONG_TEXT)]
    if strip:  # the [SEP] the tokenizer appends (also to the truncated text) becomes 0
        sep = ref.tokenizer.sep_token_id
        assert spec["sep_id"] == sep and not (got == sep).any()
        assert ref.tokenizer(["x"]).input_ids[0][-1] == sep
        assert (long_row[:-1] != spec["pad_id"]).all() and long_row[-1] == 0
    else:
        assert (long_row != spec["pad_id"]).all()  # truncated: no padding left


def test_siglip_with_timm_vision_tower(hf_tokenizers, tmp_path, images):
    """SigLIP's image tower is a timm ViT (MAP pooling, no projection): a tiny one exports and agrees."""
    pytest.importorskip("timm")
    from pmatch_duckdb.build.openclip import export_openclip

    (tmp_path / f"{SIG_TIMM_ARCH}.json").write_text(json.dumps(sig_cfg(str(hf_tokenizers["t5"]), timm=True)))
    open_clip.add_model_config(tmp_path / f"{SIG_TIMM_ARCH}.json")
    torch.manual_seed(7)
    model = open_clip.create_model(SIG_TIMM_ARCH, pretrained=None).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ckpt = tmp_path / "timm.bin"
    torch.save(model.state_dict(), ckpt)
    home = tmp_path / "home"
    export_openclip(SIG_TIMM_ARCH, ckpt, "sig-timm", home=home, preprocess=SIG_PP, log=lambda _: None)
    m = find_bundle("sig-timm", home).verify().manifest
    assert m["dim"] == 64 and m["towers"]["image"]["inputs"] == {"pixels": "float32[batch,3,160,160]"}
    con = pm.connect(home=home, image_roots=[images])
    try:
        names = ["wide.png", "tall.png", "red.png"]
        img = np.stack(embed_in_sql(con, "image", "sig-timm", names))
        txt = np.stack(embed_in_sql(con, "text", "sig-timm", TRICKY))
    finally:
        con.close()
    assert np.abs(img - sig_torch_image(model, [images / n for n in names])).max() <= TOL
    with torch.no_grad():
        want = model.encode_text(open_clip.get_tokenizer(SIG_TIMM_ARCH)(TRICKY), normalize=True).numpy()
    assert np.abs(txt - want).max() <= TOL


def test_siglip_export_errors(tmp_path, sig_model, sig_ckpt, hf_tokenizers, checkpoints):
    from click.testing import CliRunner

    from pmatch_duckdb.build.openclip import ExportError, export_openclip
    from pmatch_duckdb.cli import main

    home = tmp_path / "home"
    # a hub tokenizer name, a checkpoint file and no tokenizer folder: what to pass, nothing downloaded
    with pytest.raises(ModelNotFoundError, match=rf"Hugging Face tokenizer '{SIG_HUB_NAME}'.*--tokenizer"):
        export_openclip(SIG_HUB_ARCH, sig_ckpt, "x", home=home)
    with pytest.raises(ModelNotFoundError, match="Hugging Face tokenizer 'timm/ViT-B-16-SigLIP'.*--tokenizer"):
        export_openclip("ViT-B-16-SigLIP", sig_ckpt, "x", home=home)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        export_openclip(SIG_HUB_ARCH, sig_ckpt, "x", home=home, tokenizer=tmp_path / "no-such-tokenizer")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="holds no Hugging Face tokenizer files"):
        export_openclip(SIG_HUB_ARCH, sig_ckpt, "x", home=home, tokenizer=tmp_path / "empty")
    # --tokenizer for a model with open_clip's BPE tokenizer
    with pytest.raises(ConfigError, match="--tokenizer applies to architectures with a Hugging Face tokenizer"):
        export_openclip(ARCH, checkpoints["bin"], "x", home=home, tokenizer=hf_tokenizers["t5"])
    # a slow-only (Python) tokenizer
    (tmp_path / "byt5").mkdir()
    (tmp_path / "byt5" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "ByT5Tokenizer"}))
    with pytest.raises(ExportError, match="slow"):
        export_openclip(SIG_HUB_ARCH, sig_ckpt, "x", home=home, tokenizer=tmp_path / "byt5")
    # a tokenizer that is not this model's: ids past the text tower's vocabulary
    big = make_t5_tokenizer(tmp_path / "big", added=100)
    with pytest.raises(ExportError, match="past the text tower's vocabulary"):
        export_openclip(SIG_HUB_ARCH, sig_ckpt, "x", home=home, tokenizer=big)
    # a folder transformers cannot read as a tokenizer
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ExportError, match="cannot load a Hugging Face tokenizer"):
        export_openclip(SIG_HUB_ARCH, sig_ckpt, "x", home=home, tokenizer=tmp_path / "broken")
    # a Hugging Face text tower named by its hub id only: its local folder is asked for, nothing downloaded
    with pytest.raises(ModelNotFoundError, match="Hugging Face text tower 'google/mt5-base'.*--hf-text-dir"):
        export_openclip("mt5-base-ViT-B-32", sig_ckpt, "x", home=home)
    assert not (home / "models" / "x").exists()
    # the CLI says the same
    res = CliRunner().invoke(main, ["models", "export-openclip", "--arch", SIG_HUB_ARCH, "--weights", str(sig_ckpt),
                                    "--name", "x", "--home", str(home)])
    assert res.exit_code != 0 and "--tokenizer" in res.output and SIG_HUB_NAME in res.output


def test_siglip_cli_export_with_tokenizer(tmp_path, sig_ckpt, hf_tokenizers, sig_home):
    from click.testing import CliRunner

    from pmatch_duckdb.cli import main

    home = tmp_path / "home"
    res = CliRunner().invoke(main, ["models", "export-openclip", "--arch", SIG_HUB_ARCH, "--weights", str(sig_ckpt),
                                    "--tokenizer", str(hf_tokenizers["t5"]), "--name", "cli-sig", "--home", str(home),
                                    "--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5",
                                    "--resize-mode", "squash"])
    assert res.exit_code == 0, res.output
    a = find_bundle("cli-sig", home).verify().manifest
    b = find_bundle("sig-tok", sig_home).manifest
    assert a["towers"] == b["towers"]
    assert a["files"]["tokenizer.json"] == b["files"]["tokenizer.json"]


# --------------------------------------------------------------------------------------------- real architectures

@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ViT-B-32"])
def test_real_architecture_exports_and_agrees(arch, tmp_path, images):
    """A real open_clip architecture (random weights: nothing is downloaded) exports and agrees with torch."""
    from pmatch_duckdb.build.openclip import export_openclip

    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None).eval()
    ckpt = tmp_path / f"{arch}.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    home = tmp_path / "home"
    export_openclip(arch, ckpt, "real", home=home, log=lambda _: None)
    m = find_bundle("real", home).verify().manifest
    assert m["dim"] == 512
    ckpt.unlink()
    con = pm.connect(home=home, image_roots=[images])
    try:
        texts = ["a red dress", "Crème brûlée 🎉", LONG_TEXT]
        t = np.stack(embed_in_sql(con, "text", "real", texts))
        names = ["red.png", "wide.png", "tall.png"]
        i = np.stack(embed_in_sql(con, "image", "real", names))
    finally:
        con.close()
    assert np.abs(t - torch_text(model, texts)).max() <= TOL
    assert np.abs(i - torch_image(model, [images / n for n in names])).max() <= TOL


# --------------------------------------------------------------------------------------------- Hugging Face text tower
# The multilingual XLM-R CLIPs (xlm-roberta-base-ViT-B-32, ...): open_clip's HFTextEncoder (a transformers
# XLM-R + mean pooler + MLP projection) built from a local Hugging Face folder. The architecture below
# keeps xlm-roberta-base-ViT-B-32's text_cfg as it is (hub names and all) and shrinks the image tower;
# the folder named xlm-roberta-base holds a tiny XLM-R config and a sentencepiece Unigram tokenizer
# trained here, wrapped as transformers' XLMRobertaTokenizer (<s>=0, <pad>=1, </s>=2, <unk>=3).

XLMR_ARCH = "pm-test-tiny-xlmr-clip"
XLMR_HUB = "xlm-roberta-base"
XLMR_CORPUS = [
    "a photo of a red dress", "stainless steel kettle with swivel base", "crème brûlée ramekins set of six",
    "rotes Kleid aus Baumwolle", "Edelstahl Wasserkocher", "sukienka czerwona bawełniana", "czajnik elektryczny",
    "無印良品 ステンレス 保温保冷マグ", "红色连衣裙 棉", "ключ гаечный комбинированный", "красное платье",
    "ชุดเดรสสีแดง ผ้าฝ้าย", "فستان أحمر قطن", "गाय का दूध", "빨간 드레스", "gaun merah katun", "Ελληνικά προϊόντα",
] * 4
XLMR_TRICKY = [
    *TRICKY, "", "ชุดเดรสสีแดง ผ้าฝ้าย 100% ไซส์ M", "فستان أحمر، قطن ١٠٠٪ مقاس M", "e\u0301te\u0301 cafe\u0301 n\u0303",
    "Z\u0351\u0361a\u0310\u0304l\u0315g\u0346o text", "गाय का दूध 1 लीटर", "빨간 드레스 🧥👗 세트", "红色连衣裙，棉质（M码）",
    "<s> literal </s> <pad> <unk> <mask>", "Ünïcödé ÅÄÖ ÆØ ß ẞ ﬀ", "emoji 👨‍👩‍👧‍👦 🇵🇱 🏳️‍🌈 1️⃣",
    " ".join(["Ключ гаечный 13 мм, ชุดเดรส, 無印良品"] * 30),
]


def make_xlmr_folder(dest: Path, layers: int = 2) -> Path:
    """A tiny XLM-R Hugging Face folder: config.json and the fast tokenizer's files (no weights)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import XLMRobertaConfig, XLMRobertaTokenizer

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(XLMR_CORPUS, trainers.UnigramTrainer(
        vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    vocab = [(piece, score) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    xt = XLMRobertaTokenizer(vocab=vocab, model_max_length=512)
    xt.save_pretrained(dest)
    XLMRobertaConfig(vocab_size=len(xt), hidden_size=48, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=96, max_position_embeddings=80, pad_token_id=1,
                     initializer_range=0.2).save_pretrained(dest)
    return dest


def xlmr_model(folder: Path, seed: int = 99):
    """The tiny XLM-R CLIP as open_clip builds it for a user, the text tower's config read from ``folder``."""
    text_cfg = {**open_clip.get_model_config(XLMR_ARCH)["text_cfg"], "hf_model_name": str(folder),
                "hf_model_pretrained": False}
    torch.manual_seed(seed)
    model = open_clip.create_model(XLMR_ARCH, pretrained=None, pretrained_text=False, text_cfg=text_cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def xlmr(tmp_path_factory) -> dict:
    """A checkpoint folder as a user has it: ``tiny-xlmr.safetensors`` beside ``xlm-roberta-base/``."""
    from safetensors.torch import save_file

    real = open_clip.get_model_config("xlm-roberta-base-ViT-B-32")
    assert real["text_cfg"]["hf_model_name"] == XLMR_HUB
    cfg_dir = tmp_path_factory.mktemp("xlmr_cfg")
    (cfg_dir / f"{XLMR_ARCH}.json").write_text(json.dumps(
        {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32,
                                         "patch_size": 16}, "text_cfg": real["text_cfg"]}))
    open_clip.add_model_config(cfg_dir / f"{XLMR_ARCH}.json")
    ckpt = tmp_path_factory.mktemp("xlmr_ckpt")
    folder = make_xlmr_folder(ckpt / XLMR_HUB)
    model = xlmr_model(folder)
    assert type(model.text.transformer).__name__ == "XLMRobertaModel" and model.text.proj is not None
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt / "tiny-xlmr.safetensors"))
    return {"model": model, "folder": folder, "weights": ckpt / "tiny-xlmr.safetensors"}


@pytest.fixture(scope="module")
def xlmr_home(xlmr, tmp_path_factory) -> Path:
    """Exported with the default resolution: the tower's folder found inside the checkpoint's folder."""
    from pmatch_duckdb.build.openclip import export_openclip

    home = tmp_path_factory.mktemp("xlmr_home")
    export_openclip(XLMR_ARCH, xlmr["weights"], "xlmr-clip", home=home, log=lambda _: None)
    return home


def xlmr_ref_tokens(texts, folder: Path):
    """open_clip's tokenizer for this architecture: HFTokenizer(hf_tokenizer_name, context_length=77)."""
    return open_clip.tokenizer.HFTokenizer(str(folder), context_length=77)(texts)


def test_xlmr_bundle_manifest(xlmr_home, xlmr):
    b = find_bundle("xlmr-clip", xlmr_home).verify()
    m = b.manifest
    assert (m["modality"], m["dim"], m["kind"]) == ("clip", 32, "onnx-clip")
    assert set(m["files"]) == {"text.onnx", "image.onnx", "tokenizer.json"}
    tok = m["towers"]["text"]["tokenizer"]
    assert (tok["type"], tok["context_length"], tok["clean"], tok["pad_id"], tok["bos_id"], tok["eos_id"]) == (
        "hf-tokenizers-json", 77, "whitespace", 1, 0, 2)
    assert tok["class"].startswith("XLMRobertaTokenizer") and tok["source"] == str(xlmr["folder"].resolve())
    hf = m["source"]["hf_text"]
    assert (hf["hf_model_name"], hf["model_type"], hf["pooler"], hf["proj"]) == (XLMR_HUB, "xlm-roberta",
                                                                                  "mean_pooler", "mlp")
    assert hf["path"] == str(xlmr["folder"].resolve())
    assert hf["config_sha256"] == sha256_file(xlmr["folder"] / "config.json")
    assert m["source"]["model_cfg"]["text_cfg"]["hf_model_name"] == XLMR_HUB  # the architecture as the user named it
    assert m["exporter"]["check"]["text_max_abs_diff"] <= TOL
    assert m["exporter"]["check"]["image_max_abs_diff"] <= TOL


def test_xlmr_tokenizer_parity_with_open_clip(xlmr_home, xlmr):
    """The torch-free tokenizer vs open_clip's HFTokenizer: scripts, emoji sequences, combining marks, long text."""
    from pmatch_duckdb.encoders.clip import ClipTextEncoder

    got = ClipTextEncoder(find_bundle("xlmr-clip", xlmr_home).verify()).tokenize(XLMR_TRICKY)
    want = xlmr_ref_tokens(XLMR_TRICKY, xlmr["folder"]).numpy()
    assert got.dtype == np.int64 and got.shape == want.shape == (len(XLMR_TRICKY), 77)
    for text, g, w in zip(XLMR_TRICKY, got, want, strict=True):
        assert g.tolist() == w.tolist(), text
    short = got[XLMR_TRICKY.index("x")].tolist()
    assert short[0] == 0 and short[short.index(2) + 1:] == [1] * (76 - short.index(2))  # <s> x </s> <pad>...
    long_row = got[-1]
    assert long_row[0] == 0 and long_row[-1] == 2 and (long_row != 1).all()  # truncated, </s> kept
    assert (got == 3).sum() < (got > 3).sum()  # mostly real pieces, not <unk>


def test_xlmr_in_sql_matches_open_clip(xlmr_home, xlmr, images):
    model, texts = xlmr["model"], [t for t in XLMR_TRICKY if t]  # '' embeds to NULL (with a reason)
    con = pm.connect(home=xlmr_home, image_roots=[images])
    try:
        got = np.stack(embed_in_sql(con, "text", "xlmr-clip", texts))
        names = ["wide.png", "tall.png", "red.png"]
        img = np.stack(embed_in_sql(con, "image", "xlmr-clip", names))
    finally:
        con.close()
    ids = xlmr_ref_tokens(texts, xlmr["folder"])
    with torch.no_grad():
        want = model.encode_text(ids, normalize=True).numpy()
    assert got.shape == (len(texts), 32) and np.abs(got - want).max() <= TOL
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # different token ids, different vectors (the tower is not degenerate)
    assert len(np.unique(got.round(4), axis=0)) == len(np.unique(ids.numpy(), axis=0))
    assert np.abs(img - torch_image(model, [images / n for n in names])).max() <= TOL


def test_xlmr_runtime_needs_neither_torch_nor_transformers(xlmr_home, xlmr, images):
    text = "ชุดเดรสสีแดง فستان أحمر 红色连衣裙 🎉"
    script = textwrap.dedent(f"""
        import sys
        for mod in ("torch", "open_clip", "torchvision", "transformers", "timm", "sentencepiece"):
            sys.modules[mod] = None
        import json
        import pmatch_duckdb as pm
        con = pm.connect(home={str(xlmr_home)!r}, image_roots=[{str(images)!r}])
        (t, i), = con.execute("SELECT pm_embed_text(?, 'xlmr-clip'), pm_embed_image('red.png', 'xlmr-clip')",
                              [{text!r}]).fetchall()
        print(json.dumps([t, i]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    t, i = json.loads(out.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        want = xlmr["model"].encode_text(xlmr_ref_tokens([text], xlmr["folder"]), normalize=True)[0].numpy()
    np.testing.assert_allclose(t, want, atol=TOL)
    np.testing.assert_allclose(i, torch_image(xlmr["model"], [images / "red.png"])[0], atol=TOL)


def test_xlmr_hf_text_dir_option_and_cli(xlmr_home, xlmr, tmp_path):
    """--hf-text-dir: the tower's folder anywhere the user says; the same bundle as the default resolution."""
    import shutil

    from click.testing import CliRunner
    from safetensors.torch import save_file

    from pmatch_duckdb.cli import main

    lone = tmp_path / "weights-only"
    lone.mkdir()
    # as the LAION XLM-R checkpoints, saved with transformers < 4.31: the tower's position_ids buffer included
    old_style = {k: v.contiguous() for k, v in xlmr["model"].state_dict().items()}
    assert "text.transformer.embeddings.position_ids" not in old_style
    old_style["text.transformer.embeddings.position_ids"] = torch.arange(80)[None]
    save_file(old_style, str(lone / "open_clip_model.safetensors"))
    other = shutil.copytree(xlmr["folder"], tmp_path / "my-xlmr")
    home = tmp_path / "home"
    res = CliRunner().invoke(main, ["models", "export-openclip", "--arch", XLMR_ARCH, "--weights", str(lone),
                                    "--hf-text-dir", str(other), "--name", "cli-xlmr", "--home", str(home)])
    assert res.exit_code == 0, res.output
    a = find_bundle("cli-xlmr", home).verify().manifest
    b = find_bundle("xlmr-clip", xlmr_home).manifest
    assert a["source"]["hf_text"]["path"] == str(other.resolve())
    assert a["source"]["hf_text"]["config_sha256"] == b["source"]["hf_text"]["config_sha256"]
    assert a["files"]["tokenizer.json"] == b["files"]["tokenizer.json"]
    assert a["exporter"]["check"]["text_max_abs_diff"] <= TOL


def test_xlmr_export_errors(xlmr, tmp_path, checkpoints, hf_tokenizers):
    """Nothing downloaded, nothing resolved outside what the user passed, unsupported towers named."""
    import shutil

    from pmatch_duckdb.build.openclip import ExportError, export_openclip

    home = tmp_path / "home"
    lone = tmp_path / "lone"
    lone.mkdir()
    weights = Path(shutil.copy(xlmr["weights"], lone / "w.safetensors"))
    # no folder beside the checkpoint, no --hf-text-dir: what to pass
    with pytest.raises(ModelNotFoundError, match=rf"text tower '{XLMR_HUB}'.*--hf-text-dir"):
        export_openclip(XLMR_ARCH, weights, "x", home=home)
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        export_openclip(XLMR_ARCH, weights, "x", home=home, hf_text_dir=tmp_path / "nowhere")
    # a link named like the tower that leads out of the checkpoint's folder is not followed
    (lone / XLMR_HUB).symlink_to(xlmr["folder"], target_is_directory=True)
    with pytest.raises(ModelNotFoundError, match="resolves outside"):
        export_openclip(XLMR_ARCH, weights, "x", home=home)
    # nor is a tower name that climbs out of it (an open_clip_config.json saying '../xlm-roberta-base')
    snap = tmp_path / "snap" / "inner"
    snap.mkdir(parents=True)
    shutil.copytree(xlmr["folder"], tmp_path / "snap" / XLMR_HUB)
    shutil.copy(xlmr["weights"], snap / "open_clip_model.safetensors")
    cfg = open_clip.get_model_config(XLMR_ARCH)
    cfg["text_cfg"] = {**cfg["text_cfg"], "hf_model_name": f"../{XLMR_HUB}"}
    (snap / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    with pytest.raises(ModelNotFoundError, match="resolves outside"):
        export_openclip(None, snap, "x", home=home)
    # an encoder-decoder tower (mT5) is named and refused; so is a config asking for custom code
    mt5 = shutil.copytree(xlmr["folder"], tmp_path / "mt5")
    (mt5 / "config.json").write_text(json.dumps({**json.loads((mt5 / "config.json").read_text()),
                                                 "model_type": "mt5"}))
    with pytest.raises(ExportError, match="'mt5'.*supports xlm-roberta"):
        export_openclip(XLMR_ARCH, weights, "x", home=home, hf_text_dir=mt5)
    remote = shutil.copytree(xlmr["folder"], tmp_path / "remote")
    (remote / "config.json").write_text(json.dumps({**json.loads((remote / "config.json").read_text()),
                                                    "auto_map": {"AutoModel": "evil.Model"}}))
    with pytest.raises(ExportError, match="custom code"):
        export_openclip(XLMR_ARCH, weights, "x", home=home, hf_text_dir=remote)
    # a tower config that does not fit the weights
    bigger = make_xlmr_folder(tmp_path / "bigger", layers=3)
    with pytest.raises(ExportError, match="do not fit"):
        export_openclip(XLMR_ARCH, weights, "x", home=home, hf_text_dir=bigger)
    # a tokenizer that pads with another id than the one the tower masks (T5's <pad>=0, XLM-R's 1)
    with pytest.raises(ExportError, match="pads with id 0.*masks pad_token_id 1"):
        export_openclip(XLMR_ARCH, weights, "x", home=home, hf_text_dir=xlmr["folder"], tokenizer=hf_tokenizers["t5"])
    # --hf-text-dir for an architecture with open_clip's own text tower
    with pytest.raises(ConfigError, match="--hf-text-dir applies to architectures with a Hugging Face text tower"):
        export_openclip(ARCH, checkpoints["bin"], "x", home=home, hf_text_dir=xlmr["folder"])
    assert not (home / "models" / "x").exists()
