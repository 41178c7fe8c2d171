"""Helpers shared by the bundle exporters: atomic bundle directories and package provenance."""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..bundles import write_manifest
from ..staging import new_staging_dir


def package_version(dist: str) -> str:
    """Installed version of a distribution, or ``"unknown"``."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success it atomically replaces ``final``.

    A crash or exception mid-export leaves the old bundle (or nothing) in place, never a half-written one.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_staging_dir(final.parent, f".{final.name}.")  # mode per the umask (not 0700)
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def finish_bundle(bundle_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Stamp the build date and write the hashed manifest."""
    manifest = {**manifest, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    return write_manifest(bundle_dir, manifest)


def export_onnx(module: Any, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                dynamic_axes: dict[str, dict[int, str]], opset: int = 17) -> None:
    """TorchScript-based ONNX export (``dynamo=False``: stable, no onnxscript needed), then checked."""
    import onnx
    import torch

    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False)
    onnx.checker.check_model(str(path))
