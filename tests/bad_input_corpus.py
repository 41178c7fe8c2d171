"""The bad-input corpus of issue 13, generated (no binary blobs in the repository).

Each case is ``(kind, value, expected)``: the kind names the input as a user would describe it, the value is
what goes into SQL, and ``expected`` is what the product promises for it (for images: the documented reason
from ``pm_image_error``, ``None`` = usable). Used by tests/test_reliability_corpus.py.
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------------------------- text

MB = 1 << 20


def text_cases() -> list[tuple[str, str | None, bool]]:
    """(kind, text, embeds?) — ``embeds`` False where the documented answer is NULL (no text)."""
    return [
        ("text: NULL", None, False),
        ("text: empty string", "", False),
        ("text: whitespace only (spaces, tabs, newlines)", " \t\r\n  \u3000\u00a0", False),
        ("text: 1 MB title", ("wireless mouse 2.4GHz " * (MB // 22 + 1))[:MB], True),
        ("text: ASCII control characters", "usb\x01\x02\x07cable\x1b[31m red\x7f", True),
        ("text: NUL bytes inside", "usb\x00cable\x00\x00 3m", True),
        ("text: only control characters / NUL", "\x00\x01\x02\x03", True),
        ("text: right-to-left (Arabic, Hebrew) with RLO override", "\u202eحذاء رياضي أحمر \u05e0\u05e2\u05dc", True),
        ("text: combining marks (zalgo)", "s\u0336\u0301\u0316h\u0337\u0300o\u0338\u0302\u0317e" * 40, True),
        ("text: zero-width joiners and spaces", "\u200dsmart\u200bwatch\u200c\ufeff band\u2060", True),
        ("text: only zero-width characters", "\u200b\u200c\u200d\ufeff", True),
        ("text: emoji and ZWJ sequences", "👩‍👩‍👧‍👦 family tent ⛺🏕️ 🇩🇪 👍🏽", True),
        ("text: mixed scripts (CJK, Cyrillic, Greek, Devanagari)", "耳机 наушники ακουστικά हेडफ़ोन headphones", True),
        ("text: Unicode noncharacters and private use", "\ufffe\uffff\U0010ffff\ue000 lamp", True),
        ("text: SQL and HTML injection", "'); DROP TABLE catalog; -- <script>alert(1)</script>", True),
        ("text: 20,000 one-letter words", "a " * 20_000, True),
        ("text: mojibake / replacement characters", "Ã©lÃ©gant \ufffd\ufffd caf\u00c3\u00a9", True),
    ]


# --------------------------------------------------------------------------------------------- images

def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(w: int = 160, h: int = 120, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) * 127 // (w + h)) + 60], -1).astype(np.uint8)
    arr = np.clip(arr.astype(int) + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width x height`` pixels with a tiny payload (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def _exif_rotated() -> bytes:
    img = _photo(160, 80)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return _encode(img, "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [_photo(64, 64, seed=i).convert("P") for i in range(3)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


@dataclass
class ImageLib:
    """A generated image library: ``root`` (the only allowed root), ``outside`` beside it; path cases."""

    root: Path
    outside: Path
    cases: list[tuple[str, str, str | None]]  # (kind, path as given to SQL, expected reason)
    blobs: list[tuple[str, bytes, str | None]]  # (kind, encoded bytes, expected reason)


def make_image_lib(base: Path, max_pixels: int) -> ImageLib:
    """Write every image case under ``base/root`` (and a few outside it); return the cases."""
    root, outside = base / "root", base / "outside"
    root.mkdir(parents=True)
    outside.mkdir()
    photo = _photo()
    jpg, png, webp = _encode(photo, "JPEG", quality=90), _encode(photo, "PNG"), _encode(photo, "WEBP", quality=80)
    files: list[tuple[str, str, bytes, str | None]] = [
        ("image: valid JPEG", "ok.jpg", jpg, None),
        ("image: zero-byte file", "empty.jpg", b"", "empty data"),
        ("image: truncated JPEG", "trunc.jpg", jpg[: len(jpg) // 2], "truncated"),
        ("image: truncated PNG", "trunc.png", png[: len(png) // 2], "truncated"),
        ("image: truncated WebP", "trunc.webp", webp[: len(webp) // 2], "corrupt"),
        ("image: HTML saved as .jpg", "page.jpg", b"<!doctype html><html><body>404 Not Found</body></html>\n" * 8,
         "not an image"),
        ("image: SVG", "logo.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
                                   b'<rect width="10" height="10"/></svg>', "not an image"),
        ("image: animated GIF (first frame)", "anim.gif", _animated_gif(), None),
        ("image: 16-bit PNG", "deep.png", _encode(Image.fromarray(
            (np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)), "PNG"), None),
        ("image: CMYK JPEG", "cmyk.jpg", _encode(photo.convert("CMYK"), "JPEG", quality=90), None),
        ("image: EXIF-rotated JPEG", "rotated.jpg", _exif_rotated(), None),
        ("image: 1x1 pixel", "pixel.png", _encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), None),
        ("image: decompression bomb (PNG header claims 10 Gpx)", "bomb.png", _bomb_png(100_000, 100_000), "too large"),
        ("image: more pixels than max_image_pixels", "huge.png",
         _encode(Image.new("L", (int(math.sqrt(max_pixels)) + 50,) * 2, 0), "PNG"), "too large"),
        ("image: valid WebP", "ok.webp", webp, None),
        ("image: palette PNG with transparency", "pal.png",
         _encode(photo.convert("P", palette=Image.Palette.ADAPTIVE), "PNG", transparency=0), None),
        ("image: PNG with a bad header CRC", "badcrc.png", png[:30] + bytes([png[30] ^ 0xFF]) + png[31:],
         "not an image"),
        ("image: JPEG with trailing garbage", "tail.jpg", jpg + os.urandom(2000), None),
        ("image: random bytes named .png", "noise.png", np.random.default_rng(1).bytes(5000), "not an image"),
        ("image: TIFF", "ok.tiff", _encode(photo, "TIFF"), None),
        ("image: BMP", "ok.bmp", _encode(photo, "BMP"), None),
    ]
    cases: list[tuple[str, str, str | None]] = []
    blobs: list[tuple[str, bytes, str | None]] = []
    for kind, name, data, expected in files:
        (root / name).write_bytes(data)
        cases.append((kind, name, expected))
        blobs.append((kind + " (as BLOB)", data, expected))
    (outside / "secret.jpg").write_bytes(jpg)
    (root / "folder.jpg").mkdir()
    os.mkfifo(root / "pipe.jpg")
    os.symlink(outside / "secret.jpg", root / "link_out.jpg")
    os.symlink(outside, root / "dir_out")
    os.symlink(root / "ok.jpg", root / "link_in.jpg")
    os.symlink(root / "loop_b.jpg", root / "loop_a.jpg")
    os.symlink(root / "loop_a.jpg", root / "loop_b.jpg")
    device = None
    try:  # a character device inside the root (as /dev/zero); needs CAP_MKNOD (root in a container)
        os.mknod(root / "zero.jpg", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
        device = "zero.jpg"
    except (PermissionError, OSError):
        pass
    cases += [
        ("path: directory", "folder.jpg", "not a file"),
        ("path: FIFO (named pipe)", "pipe.jpg", "not a file"),
        ("path: symlink out of the image roots", "link_out.jpg", "outside allowed roots"),
        ("path: symlinked folder out of the roots", "dir_out/secret.jpg", "outside allowed roots"),
        ("path: symlink inside the roots", "link_in.jpg", None),
        ("path: ../ traversal", "../outside/secret.jpg", "outside allowed roots"),
        ("path: absolute path outside the roots", str(outside / "secret.jpg"), "outside allowed roots"),
        ("path: absolute system file", "/etc/passwd", "outside allowed roots"),
        ("path: absolute path inside the roots", str(root / "ok.jpg"), None),
        ("path: device file outside the roots", "/dev/zero", "outside allowed roots"),
        ("path: URL (https)", "https://example.com/a.jpg", "url fetching disabled"),
        ("path: URL (file://)", "file:///etc/passwd", "url fetching disabled"),
        ("path: missing file", "nope/none.jpg", "missing file"),
        ("path: empty string", "", "empty path"),
        ("path: whitespace", "  \t", "empty path"),
        ("path: NUL byte inside", "ok.jpg\x00.png", "invalid path"),
        ("path: 5000 characters (over PATH_MAX)", "a/" * 2500 + "x.jpg", "invalid path"),
        ("path: file name of 300 characters", "n" * 300 + ".jpg", "invalid path"),
        ("path: symlink loop", "loop_a.jpg", "missing file"),
        ("path: newline and quotes", "ok'\".jpg\n", "missing file"),
        ("path: home-relative ~", "~/.ssh/id_rsa", "outside allowed roots"),
    ]
    if device:
        cases.append(("path: character device inside the roots", device, "not a file"))
    blobs += [("BLOB: empty", b"", "empty data"),
              ("BLOB: invalid UTF-8 / random bytes", b"\xff\xfe\xfa\x80\x81 not utf-8 \xc3\x28", "not an image")]
    return ImageLib(root, outside, cases, blobs)


# --------------------------------------------------------------------------------------------- prices

def price_cases() -> list[tuple[str, str]]:
    """(kind, SQL expression of the price)."""
    return [
        ("price: NULL", "NULL::DOUBLE"),
        ("price: NaN", "'nan'::DOUBLE"),
        ("price: +infinity", "'inf'::DOUBLE"),
        ("price: -infinity", "'-inf'::DOUBLE"),
        ("price: negative", "-19.99::DOUBLE"),
        ("price: zero and -0.0", "-0.0::DOUBLE"),
        ("price: 1e308", "1e308::DOUBLE"),
        ("price: smallest subnormal 5e-324", "5e-324::DOUBLE"),
        ("price: DECIMAL(18,2)", "1234567890123456.78::DECIMAL(18,2)"),
        ("price: HUGEINT 1e38", "100000000000000000000000000000000000000::HUGEINT"),
        ("price: FLOAT", "12.5::FLOAT"),
    ]


# --------------------------------------------------------------------------------------------- ids

def id_cases() -> list[tuple[str, str, str]]:
    """(kind, SQL producing an offer table from range(3) r(i), expected: 'ok' or an error fragment)."""
    return [
        ("ids: duplicate ids", "SELECT i % 2 AS id, 'usb cable ' || i AS title FROM range(3) r(i)", "duplicate id"),
        ("ids: NULL id", "SELECT CASE WHEN i = 1 THEN NULL ELSE i END AS id, 'usb cable ' || i AS title "
                         "FROM range(3) r(i)", "NULL id"),
        ("ids: mixed types (INTEGER and VARCHAR unified by UNION)",
         "SELECT 1 AS id, 'usb cable' AS title UNION ALL SELECT 'sku-2', 'usb charger' "
         "UNION ALL SELECT 3, 'hdmi cable'", "ok"),
        ("ids: collide after casting to text (1 and '1')",
         "SELECT 1 AS id, 'usb cable' AS title UNION ALL SELECT '1', 'usb charger' UNION ALL SELECT 3, 'x'",
         "duplicate id"),
        ("ids: quotes, backslashes, SQL in VARCHAR ids",
         "SELECT * FROM (VALUES ('a''b', 'usb cable'), ('c\\d', 'usb charger'), "
         "('x'' OR ''1''=''1', 'hdmi cable'), ('%_*', 'hdmi adapter')) t(id, title)", "ok"),
        ("ids: unicode, whitespace and empty-string ids",
         "SELECT * FROM (VALUES ('ü-ñ-😀', 'usb cable'), (' ', 'usb charger'), ('', 'hdmi cable')) t(id, title)", "ok"),
        ("ids: 10,000-character id", "SELECT repeat('k', 10000) || i AS id, 'usb cable ' || i AS title "
                                     "FROM range(3) r(i)", "ok"),
        ("ids: HUGEINT extremes and negatives",
         "SELECT * FROM (VALUES (170141183460469231731687303715884105727::HUGEINT, 'usb cable'), "
         "(-170141183460469231731687303715884105727::HUGEINT, 'usb charger'), (-1::HUGEINT, 'hdmi')) t(id, title)",
         "ok"),
        ("ids: UUID", "SELECT uuid() AS id, 'usb cable ' || i AS title FROM range(3) r(i)", "ok"),
        ("ids: TIMESTAMP with microseconds",
         "SELECT TIMESTAMP '2024-02-29 23:59:59.123456' + INTERVAL (i) SECOND AS id, 'usb cable ' || i AS title "
         "FROM range(3) r(i)", "ok"),
        ("ids: DATE", "SELECT DATE '2024-01-01' + i::INTEGER AS id, 'usb cable ' || i AS title FROM range(3) r(i)",
         "ok"),
        ("ids: DOUBLE ids", "SELECT i / 3 AS id, 'usb cable ' || i AS title FROM range(3) r(i)", "column 'id'"),
        ("ids: BOOLEAN ids", "SELECT i = 0 AS id, 'usb cable ' || i AS title FROM range(2) r(i)", "column 'id'"),
    ]


# --------------------------------------------------------------------------------------------- table shapes

def shape_cases() -> list[tuple[str, str, str]]:
    """(kind, SQL of the offer table, expected: 'ok', 'no rows' or an error fragment)."""
    return [
        ("table: empty", "SELECT 1 AS id, 'x' AS title LIMIT 0", "ok"),
        ("table: one row", "SELECT 1 AS id, 'usb cable' AS title", "ok"),
        ("table: only NULL titles and no images",
         "SELECT i AS id, NULL::VARCHAR AS title, NULL::VARCHAR[] AS images FROM range(4) r(i)", "ok"),
        ("table: all-NULL columns of NULL type", "SELECT i AS id, 'usb ' || i AS title, NULL AS brand, NULL AS price, "
                                                 "NULL AS images, NULL AS description FROM range(3) r(i)", "ok"),
        ("table: no title column", "SELECT i AS id, 'usb' AS name FROM range(3) r(i)", "lacks required column"),
        ("table: no id column", "SELECT 'usb' AS title FROM range(3) r(i)", "lacks required column"),
        ("table: upper-case column names", "SELECT i AS \"ID\", 'usb ' || i AS \"Title\" FROM range(3) r(i)", "ok"),
        ("table: 40 extra columns", "SELECT i AS id, 'usb ' || i AS title, "
         + ", ".join(f"i * {j} AS extra_{j}" for j in range(40)) + " FROM range(3) r(i)", "ok"),
        ("table: images list with NULL and empty elements",
         "SELECT i AS id, 'usb ' || i AS title, [NULL, '', 'missing.jpg']::VARCHAR[] AS images FROM range(3) r(i)",
         "ok"),
        ("table: 2100 rows (more than one 2048-row DuckDB vector)",
         "SELECT i AS id, 'usb cable model ' || i AS title FROM range(2100) r(i)", "ok"),
    ]
