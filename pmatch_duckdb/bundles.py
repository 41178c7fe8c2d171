"""Model bundles: a directory with ONNX graph(s), tokenizer/preprocessing files and ``manifest.json``.

The manifest records name, modality, dimension, input spec, preprocessing, where the weights came
from, and the sha256 of every file. A bundle is *verified* when every listed file exists and hashes
to the recorded value; nothing is loaded from an unverified bundle. Only ONNX and JSON are ever read
at run time (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelIntegrityError, ModelNotFoundError
from .home import models_dir

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
BUILD_HINT = "pmatch models build"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A model bundle on disk, as described by its manifest."""

    path: Path
    manifest: dict[str, Any] = field(hash=False, compare=False)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def modality(self) -> str:
        return self.manifest["modality"]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def file(self, key: str) -> Path:
        """Absolute path of a file the manifest names under ``files`` (e.g. ``"model.onnx"``)."""
        if key not in self.manifest["files"]:
            raise ModelIntegrityError(f"bundle {self.name!r} has no file {key!r} in its manifest")
        return self.path / key

    def problems(self) -> list[str]:
        """Every reason this bundle does not verify (empty when it is intact)."""
        if "error" in self.manifest:
            return [self.manifest["error"]]
        out: list[str] = []
        if self.manifest.get("format_version") != FORMAT_VERSION:
            out.append(f"manifest format {self.manifest.get('format_version')!r} != {FORMAT_VERSION}")
        for rel, digest in self.manifest.get("files", {}).items():
            p = self.path / rel
            if not p.is_file():
                out.append(f"{rel}: missing")
            elif _cached_sha256(p) != digest:
                out.append(f"{rel}: sha256 mismatch")
        if not self.manifest.get("files"):
            out.append("manifest lists no files")
        return out

    def verify(self) -> Bundle:
        """Raise :class:`ModelIntegrityError` naming the rebuild command unless the bundle verifies."""
        bad = self.problems()
        if bad:
            raise ModelIntegrityError(
                f"model bundle {self.name!r} at {self.path} failed verification ({'; '.join(bad)}); "
                f"rebuild it with: {BUILD_HINT} --force"
            )
        return self


_hash_cache: dict[tuple[str, int, int, int, int], str] = {}
_hash_lock = threading.Lock()


def _cached_sha256(path: Path) -> str:
    """sha256 cached by file identity so listing/verifying repeatedly stays cheap.

    The key includes ctime and inode: a rewrite that restores size and mtime still changes ctime.
    """
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    with _hash_lock:
        if key in _hash_cache:
            return _hash_cache[key]
    digest = sha256_file(path)
    with _hash_lock:
        _hash_cache[key] = digest
    return digest


def write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in ``bundle_dir`` (except the manifest) and write ``manifest.json``."""
    files = {}
    for p in sorted(bundle_dir.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[p.relative_to(bundle_dir).as_posix()] = sha256_file(p)
    manifest = {**manifest, "format_version": FORMAT_VERSION, "files": files}
    tmp = bundle_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, bundle_dir / MANIFEST)
    return manifest


def read_bundle(path: Path) -> Bundle:
    """Read a bundle's manifest (without verifying hashes)."""
    mf = path / MANIFEST
    try:
        manifest = json.loads(mf.read_text())
    except FileNotFoundError:
        raise ModelNotFoundError(f"no {MANIFEST} in {path}; build it with: {BUILD_HINT}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelIntegrityError(
            f"{mf} is not valid JSON ({e}); rebuild it with: {BUILD_HINT} --force"
        ) from None
    for key in ("name", "modality", "dim", "files"):
        if key not in manifest:
            raise ModelIntegrityError(f"{mf} lacks {key!r}; rebuild it with: {BUILD_HINT} --force")
    if not isinstance(manifest["files"], dict):
        raise ModelIntegrityError(f"{mf}: 'files' must map file names to sha256 hashes")
    inside = path.resolve()
    for rel in manifest["files"]:  # a manifest names files of its own folder only: nothing else is read
        p = Path(rel)
        if not isinstance(rel, str) or p.is_absolute() or ".." in p.parts or not (inside / p).resolve().is_relative_to(
                inside):
            raise ModelIntegrityError(f"{mf} lists {rel!r}, a file outside its bundle folder; refused")
    return Bundle(path=path, manifest=manifest)


_NEW_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def check_new_bundle_name(name: str) -> str:
    """A name for a new bundle: letters, digits, ``_ . -`` (no quotes, spaces, separators, ``..`` or NUL)."""
    if not isinstance(name, str) or not _NEW_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"invalid model name {name!r}: use letters, digits, '_', '.' and '-' "
                          "(at most 128, not starting with '.' or '-')")
    return name


def find_bundle(name: str, home: str | os.PathLike[str] | None = None) -> Bundle:
    """Locate an installed bundle by name; a clear error naming the build command if absent."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
        raise ModelNotFoundError(f"invalid model name {name!r}")
    d = models_dir(home) / name
    if not (d / MANIFEST).is_file():
        installed = ", ".join(b.name for b in list_bundles(home)) or "none"
        raise ModelNotFoundError(
            f"model bundle {name!r} is not installed in {models_dir(home)} (installed: {installed}); "
            f"build the default models with: {BUILD_HINT}"
        )
    return read_bundle(d)


def list_bundles(home: str | os.PathLike[str] | None = None) -> list[Bundle]:
    """All bundle directories under the pmatch home, sorted by name.

    A directory whose manifest cannot be read is still listed (so ``pmatch models list`` shows it as
    unverified), with the reason under ``manifest["error"]``.
    """
    root = models_dir(home)
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if d.is_dir() and (d / MANIFEST).is_file():
            try:
                out.append(read_bundle(d))
            except (ModelNotFoundError, ModelIntegrityError) as e:
                out.append(Bundle(d, {"name": d.name, "modality": "unknown", "dim": 0, "files": {}, "error": str(e)}))
    return out
