"""int8 encoder bundles: built from the fp32 ones, hashed like any bundle, close to fp32, opt-in by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import pmatch_duckdb as pm
from pmatch_duckdb.bundles import find_bundle
from pmatch_duckdb.errors import ModelIntegrityError

pytest.importorskip("onnxruntime.quantization")
pytest.importorskip("onnx")
from pmatch_duckdb.build import defaults, quantize  # noqa: E402
from pmatch_duckdb.cli import main as cli  # noqa: E402
from pmatch_duckdb.encoders.image import ImageEncoder  # noqa: E402
from pmatch_duckdb.encoders.image_io import ImagePolicy  # noqa: E402
from pmatch_duckdb.encoders.text import TextEncoder  # noqa: E402

TITLES = ["Sony Bravia KDL-40V4100 40in LCD TV", "Canon EOS 450D digital SLR camera body",
          "Apple iPod nano 8GB silver", "Logitech MX Revolution cordless laser mouse",
          "Samsung 2GB microSD memory card", "Panasonic Lumix DMC-FZ18 black", "Bose QuietComfort 3 headphones",
          "Garmin nuvi 260W portable GPS", "Nikon Coolpix S550 red", "Philips Sonicare toothbrush HX6711",
          "KitchenAid stand mixer 5 quart", "Dyson DC25 ball vacuum cleaner"]


@pytest.fixture(scope="module")
def qhome(tmp_path_factory, home: Path) -> Path:
    """A pmatch home linking the fp32 default bundles; int8 variants are built into it by the tests."""
    h = tmp_path_factory.mktemp("qhome")
    (h / "models").mkdir()
    for b in defaults.DEFAULT_BUNDLES:
        (h / "models" / b).symlink_to(home / "models" / b)
    return h


def test_text_int8_bundle(qhome: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = defaults.build_defaults(home=qhome, names=["minilm-l6-v2-int8"], log=lambda m: None)
    assert res == {"minilm-l6-v2": "up to date", "minilm-l6-v2-int8": "built"}
    assert list(tmp_path.iterdir()) == []  # no scratch files left in the working directory
    b = find_bundle("minilm-l6-v2-int8", qhome).verify()
    fp = find_bundle("minilm-l6-v2", qhome)
    q = b.manifest["quantization"]
    assert q["method"] == "dynamic" and q["source_bundle"] == "minilm-l6-v2"
    assert q["source_sha256"] == fp.manifest["files"]["model.onnx"]
    assert b.dim == fp.dim and b.modality == "text" and set(b.manifest["files"]) == {"model.onnx", "tokenizer.json"}
    assert b.file("model.onnx").stat().st_size < 0.8 * fp.file("model.onnx").stat().st_size
    a, v = TextEncoder(fp).encode(TITLES), TextEncoder(b).encode(TITLES)
    cos = (a * v).sum(axis=1)
    assert cos.min() > 0.85 and np.median(cos) > 0.93, cos
    # each int8 vector's nearest fp32 vector is its own title's
    assert (np.argmax(v @ a.T, axis=1) == np.arange(len(TITLES))).all()
    assert defaults.build_defaults(home=qhome, names=["minilm-l6-v2-int8"], log=lambda m: None)[
        "minilm-l6-v2-int8"] == "up to date"
    # an int8 bundle made from another build of its fp32 source is out of date
    stale = {**b.manifest, "quantization": {**q, "source_sha256": "0" * 64}}
    assert "another build" in quantize.int8_outdated(stale, qhome)

    # opt in per connection; the fp32 bundle stays the default
    con = pm.connect(home=qhome, image_roots=[qhome], text_model="minilm-l6-v2-int8")
    got = np.array(con.execute("SELECT pm_embed_text(?)", [TITLES[0]]).fetchone()[0], dtype=np.float32)
    con.close()
    # dynamic quantization scales activations per batch: compare with the title embedded on its own
    alone = TextEncoder(b).encode(TITLES[:1])[0]
    assert got.shape == (384,) and abs(float(got @ alone) - 1.0) < 1e-4 and float(got @ v[0]) > 0.95


def test_tampered_int8_bundle_is_refused(qhome: Path, tmp_path: Path):
    defaults.build_defaults(home=qhome, names=["minilm-l6-v2-int8"], log=lambda m: None)
    h = tmp_path / "home"
    (h / "models").mkdir(parents=True)
    import shutil

    shutil.copytree(qhome / "models" / "minilm-l6-v2-int8", h / "models" / "minilm-l6-v2-int8")
    (h / "models" / "minilm-l6-v2").symlink_to(qhome / "models" / "minilm-l6-v2")
    with open(h / "models" / "minilm-l6-v2-int8" / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelIntegrityError):
        find_bundle("minilm-l6-v2-int8", h).verify()


def test_cli_int8_flag_and_unknown_name(qhome: Path):
    r = CliRunner().invoke(cli, ["models", "build", "--home", str(qhome), "--only", "minilm-l6-v2", "--int8"])
    assert r.exit_code == 0, r.output
    assert "minilm-l6-v2-int8" in r.output and "efficientnet" not in r.output
    r = CliRunner().invoke(cli, ["models", "build", "--home", str(qhome), "--only", "nope-int8"])
    assert r.exit_code != 0 and "no default bundle named 'nope-int8'" in r.output


@pytest.mark.slow
def test_image_int8_bundle_static_calibration(qhome: Path, tmp_path: Path, monkeypatch):
    """Static int8 with generated calibration photos: recorded in the manifest, close enough to fp32 that
    each rendered product's int8 embedding finds its own fp32 embedding."""
    monkeypatch.setattr(quantize, "CALIBRATION_IMAGES", 24)
    calls = []
    real = quantize.calibration_photos

    def spy(out_dir: Path, n: int = 24, seed: int = quantize.CALIBRATION_SEED) -> list[Path]:
        calls.append(n)
        return real(out_dir, 24, seed)

    monkeypatch.setattr(quantize, "calibration_photos", spy)
    res = defaults.build_defaults(home=qhome, names=["efficientnet-lite0-int8"], log=lambda m: None)
    assert res["efficientnet-lite0-int8"] == "built" and calls
    b = find_bundle("efficientnet-lite0-int8", qhome).verify()
    q = b.manifest["quantization"]
    assert q["method"] == "static" and q["format"] == "QOperator" and q["calibration"]["images"] == 24
    assert "demo.synthetic" in q["calibration"]["source"]
    assert json.loads((b.path / "manifest.json").read_text())["dim"] == 1280
    # held-out rendered photos (another seed than the calibration set)
    photos = quantize.calibration_photos(tmp_path / "eval", n=12, seed=99)
    policy = ImagePolicy(roots=(tmp_path.resolve(),), max_pixels=40_000_000, max_bytes=50 << 20)
    a, _ = ImageEncoder(find_bundle("efficientnet-lite0", qhome)).encode([str(p) for p in photos], policy)
    v, reasons = ImageEncoder(b).encode([str(p) for p in photos], policy)
    assert all(r is None for r in reasons)
    cos = (a * v).sum(axis=1)
    assert np.median(cos) > 0.6, cos
    assert (np.argmax(v @ a.T, axis=1) == np.arange(len(photos))).mean() >= 0.75
