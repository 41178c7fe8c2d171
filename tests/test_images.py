"""pm_embed_image / pm_embed_images / pm_image_error(s): the ONNX EfficientNet bundle against its torch source,
classification sanity, every bad-input kind (each via SQL), orientation, colour modes and pooling."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import pmatch_duckdb as pm
from pmatch_duckdb.encoders.image_io import to_rgb
from pmatch_duckdb.encoders.registry import get_image_encoder

skdata = pytest.importorskip("skimage.data")

DIM = 1280
MAX_PIXELS = 1_000_000  # limits of the `bad` connection
MAX_BYTES = 300_000


# --------------------------------------------------------------------------------------------- helpers

def chelsea() -> Image.Image:
    return Image.fromarray(skdata.chelsea())  # 451 x 300 RGB cat


def coffee() -> Image.Image:
    return Image.fromarray(skdata.coffee())  # 600 x 400 RGB cup of coffee


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def fake_png(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A syntactically valid 8-bit greyscale PNG whose header claims ``width x height`` (tiny payload)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64) if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def vec(value) -> np.ndarray | None:
    return None if value is None else np.asarray(value, dtype=np.float32)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def embed_paths(con: duckdb.DuckDBPyConnection, paths: list[str | None]) -> list[tuple[np.ndarray | None, str | None]]:
    """(pm_embed_image, pm_image_error) for each path, in order."""
    tbl = pa.table({"i": pa.array(range(len(paths)), pa.int32()), "p": pa.array(paths, pa.string())})
    con.register("_imgs", tbl)
    try:
        rows = con.execute("SELECT i, pm_embed_image(p), pm_image_error(p) FROM _imgs ORDER BY i").fetchall()
    finally:
        con.unregister("_imgs")
    assert [r[0] for r in rows] == list(range(len(paths)))
    return [(vec(r[1]), r[2]) for r in rows]


def embed_one(con: duckdb.DuckDBPyConnection, path: str) -> np.ndarray:
    v, reason = embed_paths(con, [path])[0]
    assert reason is None, reason
    assert v is not None
    return v


def assert_unit(v: np.ndarray) -> None:
    assert v.shape == (DIM,)
    assert np.all(np.isfinite(v))
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-4


# --------------------------------------------------------------------------------------------- layout

@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Path:
    """base/root (the only image root) with good and bad files; base/outside and base/root_evil beside it."""
    base = tmp_path_factory.mktemp("imglib")
    root, outside, evil = base / "root", base / "outside", base / "root_evil"
    for d in (root / "good", root / "bad", outside, evil):
        d.mkdir(parents=True)
    cat, cup = chelsea(), coffee()
    cat_jpg = encode(cat, "JPEG", quality=92)
    (root / "good" / "cat.jpg").write_bytes(cat_jpg)
    (root / "good" / "coffee.jpg").write_bytes(encode(cup, "JPEG", quality=92))
    (root / "good" / "small.png").write_bytes(encode(cat.resize((96, 64)), "PNG"))
    (outside / "secret.jpg").write_bytes(cat_jpg)
    (evil / "cat.jpg").write_bytes(cat_jpg)
    os.symlink(outside / "secret.jpg", root / "link_out.jpg")
    os.symlink(outside, root / "linkdir_out")
    os.symlink(root / "good" / "cat.jpg", root / "alias.jpg")
    bad = root / "bad"
    (bad / "notes.jpg").write_text("these are not the pixels you are looking for\n" * 20)
    (bad / "truncated.jpg").write_bytes(cat_jpg[: len(cat_jpg) // 2])
    png = encode(cat, "PNG")
    (bad / "truncated.png").write_bytes(png[: len(png) // 2])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "many_pixels.jpg").write_bytes(encode(cat.resize((1300, 866)), "JPEG", quality=70))  # 1.13 MP
    (bad / "bomb_header.png").write_bytes(fake_png(100_000, 100_000))  # claims 10 gigapixels
    (bad / "bomb_real.png").write_bytes(encode(Image.new("L", (4000, 4000), 0), "PNG"))  # 16 MP, a few kB
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    (bad / "many_bytes.png").write_bytes(encode(Image.fromarray(noise), "PNG"))  # 0.16 MP, ~480 kB
    assert (bad / "bomb_real.png").stat().st_size < MAX_BYTES
    assert (bad / "many_bytes.png").stat().st_size > MAX_BYTES
    assert (bad / "many_pixels.jpg").stat().st_size < MAX_BYTES
    return base


@pytest.fixture(scope="module")
def bad_con(home, lib):
    """Images confined to lib/root with small limits (1 MP, 300 kB)."""
    c = pm.connect(home=home, image_roots=[lib / "root"], max_image_pixels=MAX_PIXELS, max_image_bytes=MAX_BYTES)
    yield c
    c.close()


# (case id, path; "{base}" is replaced by the library folder, expected reason (None = usable))
PATH_CASES = [
    ("good_jpeg", "good/cat.jpg", None),
    ("good_png", "good/coffee.jpg", None),
    ("absolute_inside_root", "{base}/root/good/cat.jpg", None),
    ("dotdot_staying_inside", "good/../good/cat.jpg", None),
    ("symlink_inside_root", "alias.jpg", None),
    ("missing_file", "good/nope.jpg", "missing file"),
    ("absolute_outside_roots", "{base}/outside/secret.jpg", "outside allowed roots"),
    ("dotdot_traversal", "../outside/secret.jpg", "outside allowed roots"),
    ("deep_dotdot_traversal", "good/../../outside/secret.jpg", "outside allowed roots"),
    ("sibling_with_root_prefix", "{base}/root_evil/cat.jpg", "outside allowed roots"),
    ("symlink_to_outside", "link_out.jpg", "outside allowed roots"),
    ("symlinked_dir_to_outside", "linkdir_out/secret.jpg", "outside allowed roots"),
    ("missing_outside_roots", "/nonexistent-dir-pmatch/x.jpg", "outside allowed roots"),
    ("directory", "good", "not a file"),
    ("root_itself", "{base}/root", "not a file"),
    ("text_file", "bad/notes.jpg", "not an image"),
    ("truncated_jpeg", "bad/truncated.jpg", "truncated"),
    ("truncated_png", "bad/truncated.png", "truncated"),
    ("empty_file", "bad/empty.jpg", "empty data"),
    ("too_many_pixels", "bad/many_pixels.jpg", "too large"),
    ("bomb_png_header", "bad/bomb_header.png", "too large"),
    ("bomb_png_compressible", "bad/bomb_real.png", "too large"),
    ("too_many_bytes", "bad/many_bytes.png", "too large"),
    ("url_https", "https://example.com/cat.jpg", "url fetching disabled"),
    ("url_http_upper", "HTTP://EXAMPLE.COM/CAT.JPG", "url fetching disabled"),
    ("url_file_scheme", "file:///etc/passwd", "url fetching disabled"),
    ("url_s3", "s3://bucket/key.jpg", "url fetching disabled"),
    ("empty_path", "", "empty path"),
    ("blank_path", "   ", "empty path"),
]


def resolve_case(path: str, base: Path) -> str:
    return path.replace("{base}", str(base))


@pytest.mark.parametrize(("case", "path", "expected"), PATH_CASES, ids=[c[0] for c in PATH_CASES])
def test_path_inputs_via_sql(bad_con, lib, case, path, expected):
    p = resolve_case(path, lib)
    (v, reason), = embed_paths(bad_con, [p])
    assert reason == expected
    if expected is None:
        assert v is not None
        assert_unit(v)
    else:
        assert v is None
    # scalar (constant-folded) form agrees with the column form
    row = bad_con.execute("SELECT pm_image_error(?::VARCHAR), pm_embed_image(?::VARCHAR) IS NULL", [p, p]).fetchall()
    assert row == [(expected, expected is not None)]


def test_null_path_gives_null(bad_con):
    assert embed_paths(bad_con, [None]) == [(None, None)]
    assert bad_con.execute("SELECT pm_embed_image(NULL) IS NULL, pm_image_error(NULL) IS NULL").fetchall() == [
        (True, True)]


def test_bomb_and_large_images_with_default_limits(con, image_dir):
    """Default limits (40 MP): a PNG claiming 10 GP and a real, highly compressible 49 MP PNG are refused."""
    (image_dir / "bomb.png").write_bytes(fake_png(100_000, 100_000))
    (image_dir / "huge.png").write_bytes(encode(Image.new("1", (7000, 7000), 1), "PNG"))
    assert (image_dir / "huge.png").stat().st_size < 1_000_000
    rows = embed_paths(con, ["bomb.png", "huge.png"])
    assert rows == [(None, "too large"), (None, "too large")]


def test_corrupt_png_data_is_reported_as_corrupt(bad_con, lib, tmp_path):
    """A PNG whose compressed pixel data is garbage (complete file, valid chunk CRCs) is 'corrupt', not
    'truncated' (Pillow says 'broken data stream'; the file is not cut short)."""
    d = lib / "root" / "bad"
    (d / "garbage_idat.png").write_bytes(fake_png(10, 10, idat=b"definitely not zlib" * 4))
    (v, reason), = embed_paths(bad_con, ["bad/garbage_idat.png"])
    assert v is None
    assert reason == "corrupt"


def test_many_rows_good_and_bad_in_one_query(bad_con, lib):
    """3000 rows mixing every bad kind with good images: nothing aborts, good rows get their own vectors."""
    goods = ["good/cat.jpg", "good/coffee.jpg", "good/small.png"]
    bads = [(resolve_case(p, lib), r) for _, p, r in PATH_CASES if r is not None] + [(None, None)]
    paths: list[str | None] = []
    expected: list[str | None] = []
    good_rows: list[int] = []
    for i in range(3000):
        if i % 60 == 0 or i in (2047, 2048, 2999):
            paths.append(goods[len(good_rows) % len(goods)])
            expected.append(None)
            good_rows.append(i)
        else:
            p, r = bads[i % len(bads)]
            paths.append(p)
            expected.append(r)
    rows = embed_paths(bad_con, paths)
    singles = {g: embed_one(bad_con, g) for g in goods}
    assert len({tuple(v.round(4)) for v in singles.values()}) == 3  # the three good images differ
    for i, ((v, reason), p, exp) in enumerate(zip(rows, paths, expected, strict=True)):
        assert reason == exp, (i, p)
        if i in good_rows:
            assert v is not None, (i, p)
            np.testing.assert_allclose(v, singles[p], atol=1e-5, err_msg=f"row {i}: {p}")
        else:
            assert v is None, (i, p)
    assert len(good_rows) >= 50


def test_prefetching_encoder_equals_serial_and_keeps_reasons(home, lib, monkeypatch):
    """The encoder decodes batch i+1 in a worker thread while the model runs batch i, or (several workers) embeds
    one batch per worker at a time: over several batches with failures in every one (and a whole batch of
    failures), both give the serial path's vectors and reasons row for row; an error raised while decoding
    reaches the caller."""
    from pmatch_duckdb.bundles import find_bundle
    from pmatch_duckdb.encoders.image import ImageEncoder
    from pmatch_duckdb.encoders.image_io import ImagePolicy

    root = lib / "root"
    policy = ImagePolicy(roots=(root.resolve(),), max_pixels=MAX_PIXELS, max_bytes=MAX_BYTES)
    goods = [str(root / "good" / n) for n in ("cat.jpg", "coffee.jpg", "small.png")]
    srcs: list[str | bytes | None] = [goods[i % 3] if i % 4 else None for i in range(20)]
    srcs += [str(root / "good" / "nope.jpg")] * 8 + [b"not an image"] + goods  # batch 4 fails whole
    bundle = find_bundle("efficientnet-lite0", home)
    fast = ImageEncoder(bundle, batch_size=7, prefetch=True)
    slow = ImageEncoder(bundle, batch_size=7, prefetch=False)
    many = ImageEncoder(bundle, threads=3, batch_size=7, workers=3)
    assert (many.workers, many.session.runs, many.session.get_session_options().intra_op_num_threads) == (3, 3, 1)
    v0, r0 = slow.encode(srcs, policy)
    assert r0.count(None) == 15 + 3 and r0[0] == "null" and r0[20] == "missing file"
    for enc in (fast, many):
        v, r = enc.encode(srcs, policy)
        assert r == r0
        np.testing.assert_allclose(v, v0, atol=1e-6)
    assert (np.abs(v0[[i for i, x in enumerate(r0) if x]]).sum() == 0) and (np.linalg.norm(v0[1]) > 0.5)

    # several workers: a multiple of ``workers`` batches of near-equal size, never above batch_size
    seen: list[int] = []
    real_run = many.run
    monkeypatch.setattr(many, "run", lambda pixels: seen.append(len(pixels)) or real_run(pixels))
    for n, sizes in ((18, [6] * 3), (24, [4] * 6), (22, [3, 3] + [4] * 4), (2, [1, 1]), (1, [1])):
        seen.clear()
        v, r = many.encode((goods * 8)[:n], policy)
        assert sorted(seen) == sizes and r == [None] * n and np.linalg.norm(v, axis=1).min() > 0.5
    seen.clear()
    many.encode(srcs, policy)  # 32 sources: 5 batches of 7 -> 6 batches of 6 or 5 (the failures run no model)
    assert len(seen) == 5 and max(seen) <= 6 and sum(seen) == 18

    # by default one worker per ORT thread, prefetching only with one worker where the model leaves a core free
    from pmatch_duckdb.encoders import image as image_mod

    monkeypatch.delenv("PMATCH_OVERLAP_DECODING", raising=False)
    monkeypatch.delenv("PMATCH_IMAGE_WORKERS", raising=False)
    monkeypatch.setattr(image_mod, "cpu_count", lambda: 4)
    assert ImageEncoder(bundle, threads=1).prefetch and ImageEncoder(bundle, threads=2).workers == 2
    monkeypatch.setenv("PMATCH_IMAGE_WORKERS", "1")  # one batch at a time on all the threads
    two = ImageEncoder(bundle, threads=2)
    assert (two.workers, two.session.runs, two.session.get_session_options().intra_op_num_threads) == (1, 1, 2)
    assert two.prefetch and not ImageEncoder(bundle, threads=4).prefetch
    monkeypatch.setenv("PMATCH_OVERLAP_DECODING", "0")  # what Ray workers set: their CPUs are the model's
    assert not ImageEncoder(bundle, threads=1).prefetch
    monkeypatch.setenv("PMATCH_OVERLAP_DECODING", "1")
    assert ImageEncoder(bundle, threads=4).prefetch
    monkeypatch.setenv("PMATCH_IMAGE_WORKERS", "8")  # capped at the thread budget
    assert ImageEncoder(bundle, threads=2).workers == 2
    monkeypatch.setenv("PMATCH_IMAGE_WORKERS", "two")
    with pytest.raises(ValueError, match="PMATCH_IMAGE_WORKERS must be a whole number, not 'two'"):
        ImageEncoder(bundle, threads=2)

    def boom(*a, **k):
        raise RuntimeError("decoder exploded")

    for enc in (fast, many):
        enc._load_chunk = boom  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="decoder exploded"):
            enc.encode(srcs, policy)


def test_session_admits_its_number_of_runs_at_once():
    """``SerializedSession(runs=k)`` lets at most k calls of ``run`` in at a time (1: serialised)."""
    import threading
    import time

    from pmatch_duckdb.encoders.sessions import SerializedSession

    class Slow:
        def __init__(self) -> None:
            self.now = self.peak = 0
            self.lock = threading.Lock()

        def run(self, *a):
            with self.lock:
                self.now += 1
                self.peak = max(self.peak, self.now)
            time.sleep(0.05)
            with self.lock:
                self.now -= 1

    for runs in (1, 2, 3):
        inner = Slow()
        sess = SerializedSession(inner, runs)  # type: ignore[arg-type]
        threads = [threading.Thread(target=sess.run) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert inner.peak == runs


# --------------------------------------------------------------------------------------------- BLOBs

def test_blob_inputs(bad_con, lib):
    root = lib / "root"
    path_vec = embed_one(bad_con, "good/cat.jpg")
    # read_blob
    rows = bad_con.execute("SELECT pm_embed_image(content), pm_image_error(content) FROM read_blob(?)",
                           [str(root / "good" / "cat.jpg")]).fetchall()
    assert rows[0][1] is None
    np.testing.assert_allclose(vec(rows[0][0]), path_vec, atol=1e-6)
    # parameter bytes
    data = (root / "good" / "cat.jpg").read_bytes()
    (v, r), = bad_con.execute("SELECT pm_embed_image(?::BLOB), pm_image_error(?::BLOB)", [data, data]).fetchall()
    assert r is None
    np.testing.assert_allclose(vec(v), path_vec, atol=1e-6)
    (v, r), = bad_con.execute("SELECT pm_embed_image(?), pm_image_error(?)", [data, data]).fetchall()
    assert r is None
    np.testing.assert_allclose(vec(v), path_vec, atol=1e-6)


BLOB_CASES = [
    ("garbage", b"\x00\x01garbage bytes that are no image", "not an image"),
    ("text", b"hello, world", "not an image"),
    ("empty", b"", "empty data"),
    ("truncated_jpeg", None, "truncated"),
    ("bomb_header", fake_png(100_000, 100_000), "too large"),
    ("too_many_bytes", None, "too large"),
]


@pytest.mark.parametrize(("case", "data", "expected"), BLOB_CASES, ids=[c[0] for c in BLOB_CASES])
def test_bad_blobs(bad_con, lib, case, data, expected):
    if case == "truncated_jpeg":
        data = (lib / "root" / "bad" / "truncated.jpg").read_bytes()
    elif case == "too_many_bytes":
        data = (lib / "root" / "bad" / "many_bytes.png").read_bytes()
    rows = bad_con.execute("SELECT pm_embed_image(?::BLOB) IS NULL, pm_image_error(?::BLOB)", [data, data]).fetchall()
    assert rows == [(True, expected)]


def test_many_blob_rows_good_and_bad(bad_con, lib):
    good = (lib / "root" / "good" / "small.png").read_bytes()
    truncated = (lib / "root" / "bad" / "truncated.jpg").read_bytes()
    kinds = [(b"not an image at all", "not an image"), (b"", "empty data"), (truncated, "truncated"), (None, None),
             (fake_png(100_000, 100_000), "too large")]
    data, expected = [], []
    for i in range(3000):
        if i % 100 == 0:
            data.append(good)
            expected.append(None)
        else:
            d, r = kinds[i % len(kinds)]
            data.append(d)
            expected.append(r)
    tbl = pa.table({"i": pa.array(range(3000), pa.int32()), "b": pa.array(data, pa.binary())})
    bad_con.register("_blobs", tbl)
    try:
        rows = bad_con.execute("SELECT i, pm_embed_image(b), pm_image_error(b) FROM _blobs ORDER BY i").fetchall()
    finally:
        bad_con.unregister("_blobs")
    single = embed_one(bad_con, "good/small.png")
    for i, v, reason in rows:
        assert reason == expected[i], i
        if data[i] is good:
            np.testing.assert_allclose(vec(v), single, atol=1e-5)
        else:
            assert v is None, i


# --------------------------------------------------------------------------------------------- model

@pytest.fixture(scope="module")
def encoder(home, tmp_path_factory):
    return get_image_encoder(pm.Settings.create(home=home, image_roots=[tmp_path_factory.mktemp("enc")]))


@pytest.fixture(scope="module")
def photo_pixels(encoder) -> np.ndarray:
    return np.stack([encoder.preprocess(to_rgb(chelsea())), encoder.preprocess(to_rgb(coffee()))])


def test_preprocess_shape(photo_pixels):
    assert photo_pixels.shape == (2, 3, 224, 224)
    assert photo_pixels.dtype == np.float32
    # ImageNet-normalised: roughly zero-centred, clearly not raw 0..255 or 0..1
    assert -3.0 < photo_pixels.min() < -0.5 and 0.5 < photo_pixels.max() < 3.0


@pytest.mark.parametrize("size", [(451, 300), (300, 451), (348, 348), (100, 37), (1999, 1001)])
def test_preprocess_equals_resize_then_crop(encoder, size):
    """Resampling only the kept box plus the fused normalisation give the values of the textbook path: resize
    the whole image (shorter side to 256), centre-crop 224, then (x / 255 - mean) / std — to within one 8-bit
    level (the box's float coordinates round a few filter weights differently), on a tiny share of values."""
    img = to_rgb(chelsea()).resize(size, Image.Resampling.BICUBIC)
    w, h = img.size
    s = encoder.resize / min(w, h)
    nw, nh = max(encoder.crop, round(w * s)), max(encoder.crop, round(h * s))
    left, top = (nw - encoder.crop) // 2, (nh - encoder.crop) // 2
    ref = img.resize((nw, nh), encoder.interp).crop((left, top, left + encoder.crop, top + encoder.crop))
    want = (np.asarray(ref, dtype=np.float32).transpose(2, 0, 1) * encoder.scale - encoder.mean) / encoder.std
    got = encoder.preprocess(img)
    assert got.shape == want.shape == (3, 224, 224) and got.dtype == np.float32
    level = (encoder.scale / encoder.std).reshape(3, 1, 1)  # one 8-bit step, per channel
    steps = np.abs(got - want) / level
    assert steps.max() <= 1 + 1e-4  # a box off by one source pixel moves edges by tens of levels
    assert (steps > 1e-4).mean() < 0.25  # measured: 0.2 % to 14 % of values, by image size


@pytest.mark.slow
def test_onnx_matches_torch(encoder, photo_pixels):
    torch = pytest.importorskip("torch")
    from pmatch_duckdb.build.image_efficientnet import load_torch_model

    emb, logits = encoder.run(photo_pixels, ["embedding", "logits"])
    with torch.no_grad():
        t_emb, t_logits = load_torch_model()(torch.from_numpy(photo_pixels))
    assert emb.shape == (2, DIM) and logits.shape == (2, 1000)
    assert np.abs(emb - t_emb.numpy()).max() <= 1e-4
    assert np.abs(logits - t_logits.numpy()).max() <= 1e-4


def test_classification_sanity_cat(encoder, photo_pixels):
    (logits,) = encoder.run(photo_pixels[:1], ["logits"])
    top5 = set(np.argsort(-logits[0])[:5].tolist())
    assert top5 & {281, 282, 285}, top5  # tabby, tiger cat, Egyptian cat


def test_classification_sanity_coffee(encoder, photo_pixels):
    """EfficientNet-Lite0 recognises the skimage coffee cup; fails if the exported graph is not the real model
    (e.g. its ReLU6 activations replaced by swish)."""
    (logits,) = encoder.run(photo_pixels[1:], ["logits"])
    top5 = set(np.argsort(-logits[0])[:5].tolist())
    assert top5 & {967, 968, 504}, top5  # espresso, cup, coffee mug


def test_sql_type_and_unit_norm(con, image_dir, encoder, photo_pixels):
    (image_dir / "coffee.png").write_bytes(encode(coffee(), "PNG"))
    assert con.execute("SELECT typeof(pm_embed_image('coffee.png'))").fetchall() == [("FLOAT[1280]",)]
    v = embed_one(con, "coffee.png")
    assert_unit(v)
    # the SQL path is the encoder on the preprocessed image (PNG is lossless)
    (direct,) = encoder.run(photo_pixels[1:])
    np.testing.assert_allclose(v, direct[0], atol=1e-5)


# --------------------------------------------------------------------------------------------- orientation / colour

def test_exif_orientation_is_applied(con, image_dir):
    upright = chelsea()
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    stored.save(image_dir / "rot6.jpg", quality=95, exif=exif)
    stored.save(image_dir / "sideways.jpg", quality=95)
    upright.save(image_dir / "upright.jpg", quality=95)
    rot6, sideways, up = (embed_one(con, n) for n in ("rot6.jpg", "sideways.jpg", "upright.jpg"))
    assert cos(rot6, up) > 0.97
    assert cos(sideways, up) < cos(rot6, up) - 0.1  # the test would notice if orientation were ignored
    blob = (image_dir / "rot6.jpg").read_bytes()
    (v,), = con.execute("SELECT pm_embed_image(?::BLOB)", [blob]).fetchall()
    np.testing.assert_allclose(vec(v), rot6, atol=1e-6)


def _mode_images() -> dict[str, tuple[bytes, str]]:
    cat = chelsea()
    grey = np.asarray(cat.convert("L"))
    p_trans = cat.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    rgba = cat.convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, cat.width, dtype=np.uint8), (cat.height, 1))
    rgba.putalpha(Image.fromarray(alpha, "L"))
    la = cat.convert("LA")
    return {
        "L": (encode(cat.convert("L"), "PNG"), "L"),
        "P": (encode(cat.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), "P"),
        "P_transparent": (encode(p_trans, "PNG", transparency=0), "P"),
        "RGBA": (encode(rgba, "PNG"), "RGBA"),
        "LA": (encode(la, "PNG"), "LA"),
        "1": (encode(cat.convert("1"), "PNG"), "1"),
        "CMYK_jpeg": (encode(cat.convert("CMYK"), "JPEG", quality=95), "CMYK"),
        "I16_png": (encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"), "I;16"),
        "I32_tiff": (encode(Image.fromarray(grey.astype(np.int32) * 1000, "I"), "TIFF"), "I"),
        "F_tiff": (encode(Image.fromarray(grey.astype(np.float32) / 255.0, "F"), "TIFF"), "F"),
        "RGB_webp": (encode(cat, "WEBP", quality=90), "RGB"),
        "RGB_gif": (encode(cat, "GIF"), "P"),
    }


MODE_IMAGES = _mode_images()
MIN_SIMILARITY = {"CMYK_jpeg": 0.97, "P": 0.93, "P_transparent": 0.85, "RGB_webp": 0.9, "RGB_gif": 0.9,
                  "L": 0.75, "LA": 0.75}


@pytest.mark.parametrize("kind", list(MODE_IMAGES))
def test_colour_modes_embed(con, image_dir, kind):
    data, mode = MODE_IMAGES[kind]
    assert Image.open(io.BytesIO(data)).mode == mode  # the fixture really has that mode
    (image_dir / f"m_{kind}").write_bytes(data)
    v = embed_one(con, f"m_{kind}")
    assert_unit(v)
    (image_dir / "ref.png").write_bytes(encode(chelsea(), "PNG"))
    ref = embed_one(con, "ref.png")
    # lossless/near-lossless conversions of the colour photo stay close to it (CMYK: not inverted)
    if kind in MIN_SIMILARITY:
        assert cos(v, ref) > MIN_SIMILARITY[kind]


def test_opaque_grey_alpha_equals_grey(con, image_dir):
    grey = chelsea().convert("L")
    (image_dir / "g.png").write_bytes(encode(grey, "PNG"))
    (image_dir / "ga.png").write_bytes(encode(grey.convert("LA"), "PNG"))
    np.testing.assert_allclose(embed_one(con, "ga.png"), embed_one(con, "g.png"), atol=1e-6)


def test_16bit_greyscale_embeds_like_8bit(con, image_dir):
    """The same greyscale picture stored with 16 bits per sample embeds like its 8-bit version.

    Fails while 16-bit images are contrast-stretched by their own min/max instead of scaled by bit depth."""
    grey = chelsea().convert("L")
    (image_dir / "g8.png").write_bytes(encode(grey, "PNG"))
    (image_dir / "g16.png").write_bytes(encode(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), "PNG"))
    assert Image.open(image_dir / "g16.png").mode == "I;16"
    v8, v16 = embed_one(con, "g8.png"), embed_one(con, "g16.png")
    assert cos(v8, v16) > 0.99


def test_transparency_is_composited_over_white(con, image_dir):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (240, 320, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: the colour channels must not matter
    (image_dir / "clear.png").write_bytes(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    (image_dir / "white.png").write_bytes(encode(Image.new("RGB", (320, 240), (255, 255, 255)), "PNG"))
    np.testing.assert_allclose(embed_one(con, "clear.png"), embed_one(con, "white.png"), atol=1e-5)


# --------------------------------------------------------------------------------------------- pm_embed_images

def test_embed_images_mean_pooling(bad_con):
    cat, cup, small = (embed_one(bad_con, p) for p in ("good/cat.jpg", "good/coffee.jpg", "good/small.png"))
    rows = bad_con.execute("""
        SELECT i, pm_embed_images(l), pm_image_errors(l) FROM (VALUES
            (0, ['good/cat.jpg', 'good/coffee.jpg']),
            (1, ['good/cat.jpg', 'good/coffee.jpg', 'good/small.png']),
            (2, ['good/cat.jpg', 'good/nope.jpg']),
            (3, ['good/cat.jpg']),
            (4, ['good/nope.jpg', 'bad/notes.jpg', '../outside/secret.jpg']),
            (5, []::VARCHAR[]),
            (6, NULL::VARCHAR[]),
            (7, ['bad/truncated.jpg', 'good/coffee.jpg', 'https://x.org/a.jpg'])
        ) t(i, l) ORDER BY i""").fetchall()
    got = {i: (vec(v), errs) for i, v, errs in rows}

    def pooled(*vs):
        m = np.mean(vs, axis=0)
        return m / np.linalg.norm(m)

    np.testing.assert_allclose(got[0][0], pooled(cat, cup), atol=1e-5)
    np.testing.assert_allclose(got[1][0], pooled(cat, cup, small), atol=1e-5)
    np.testing.assert_allclose(got[2][0], got[3][0], atol=1e-6)  # the failing image is skipped
    np.testing.assert_allclose(got[3][0], cat, atol=1e-5)
    np.testing.assert_allclose(got[7][0], cup, atol=1e-5)
    assert got[4][0] is None and got[5][0] is None and got[6][0] is None
    assert_unit(got[1][0])
    assert got[0][1] == [None, None]
    assert got[2][1] == [None, "missing file"]
    assert got[4][1] == ["missing file", "not an image", "outside allowed roots"]
    assert got[5][1] == []
    assert got[6][1] is None
    assert got[7][1] == ["truncated", None, "url fetching disabled"]
    assert bad_con.execute("SELECT typeof(pm_embed_images(['good/cat.jpg']))").fetchall() == [("FLOAT[1280]",)]


def test_embed_images_skips_null_elements(bad_con):
    rows = bad_con.execute("SELECT pm_embed_images(['good/cat.jpg', NULL]), pm_embed_images(['good/cat.jpg']), "
                           "pm_embed_images([NULL::VARCHAR]) IS NULL").fetchall()
    a, b, all_null = rows[0]
    np.testing.assert_allclose(vec(a), vec(b), atol=1e-6)
    assert all_null is True
