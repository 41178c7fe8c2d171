"""Reading images safely: path confinement, size limits, decoding, orientation and colour modes.

Every failure becomes a short *reason* string instead of an exception, so one bad image never
aborts a query. Reasons (stable, documented): ``empty path``, ``invalid path`` (a NUL byte, a name too
long for the file system), ``url fetching disabled``,
``outside allowed roots``, ``missing file``, ``not a file``, ``unreadable``, ``too large``,
``not an image``, ``truncated``, ``corrupt``, ``empty data``.
"""

from __future__ import annotations

import errno
import io
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Pillow must never silently decode half an image: truncated files are reported as "truncated".
ImageFile.LOAD_TRUNCATED_IMAGES = False

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class ImagePolicy:
    """Where images may be read from and how big they may be."""

    roots: tuple[Path, ...]
    max_pixels: int
    max_bytes: int

    def resolve(self, path: str) -> tuple[Path | None, str | None]:
        """Resolve a user path to a real file inside the roots, or return a reason."""
        if not path or not path.strip():
            return None, "empty path"
        if _URL.match(path.strip()):
            return None, "url fetching disabled"
        if "\x00" in path:  # no file name holds a NUL byte (and os functions raise on one)
            return None, "invalid path"
        try:
            p = Path(path.strip()).expanduser()
        except RuntimeError:  # '~user' of an unknown user
            return None, "outside allowed roots"
        candidates = [p] if p.is_absolute() else [root / p for root in self.roots]
        outside = False
        for cand in candidates:
            try:
                real = Path(os.path.realpath(cand))  # resolves symlinks and '..'
                if not any(real == r or real.is_relative_to(r) for r in self.roots):
                    outside = True
                    continue
                if real.exists():
                    if not real.is_file():
                        return None, "not a file"
                    return real, None
            except OSError as e:  # ENAMETOOLONG, ELOOP, EACCES on a parent folder, ...
                return None, "invalid path" if e.errno == errno.ENAMETOOLONG else "unreadable"
        return None, ("outside allowed roots" if outside else "missing file")


@dataclass
class LoadedImage:
    """An RGB image ready for preprocessing, or the reason it is unusable."""

    image: Image.Image | None
    reason: str | None


def _read_bytes(source: str | bytes, policy: ImagePolicy) -> tuple[bytes | None, str | None]:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            return None, "empty data"
        if len(data) > policy.max_bytes:
            return None, "too large"
        return data, None
    path, reason = policy.resolve(source)
    if path is None:
        return None, reason
    try:
        size = path.stat().st_size
        if size > policy.max_bytes:
            return None, "too large"
        if size == 0:
            return None, "empty data"
        return path.read_bytes(), None
    except PermissionError:
        return None, "unreadable"
    except OSError:
        return None, "unreadable"


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparent pixels are composited over white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L"):
        # 16-bit greyscale: the same picture as its 8-bit version, so scale 0..65535 -> 0..255
        a = np.asarray(img, dtype=np.float32) / 257.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype("uint8"), "L").convert("RGB")
    if img.mode in ("I", "F"):
        # 32-bit integer/float greyscale has no fixed range: scale by the data range
        a = np.asarray(img, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.astype("uint8"), "L").convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_image(source: str | bytes | None, policy: ImagePolicy, draft_size: int | None = None) -> LoadedImage:
    """Read, check and decode one image (a path or encoded bytes) into an upright RGB image.

    ``draft_size`` lets JPEG decoding scale down by a power of two while staying at least that large
    (much faster for big photos; the model resizes to 256 anyway).
    """
    if source is None:
        return LoadedImage(None, "null")
    data, reason = _read_bytes(source, policy)
    if data is None:
        return LoadedImage(None, reason)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w <= 0 or h <= 0:
                return LoadedImage(None, "corrupt")
            if w * h > policy.max_pixels:
                return LoadedImage(None, "too large")
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return LoadedImage(to_rgb(img), None)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return LoadedImage(None, "too large")
    except UnidentifiedImageError:
        return LoadedImage(None, "not an image")
    except OSError as e:
        msg = str(e).lower()
        return LoadedImage(None, "truncated" if "truncat" in msg else "corrupt")
    except (ValueError, SyntaxError, IndexError, TypeError, KeyError, ZeroDivisionError, EOFError,
            MemoryError):
        # Pillow's plugins raise these on malformed headers/segments
        return LoadedImage(None, "corrupt")


def image_errors(sources: Sequence[str | bytes | None], policy: ImagePolicy) -> list[str | None]:
    """The reason each source is unusable, or ``None`` where it decodes fine."""
    return [load_image(s, policy, draft_size=256).reason for s in sources]
