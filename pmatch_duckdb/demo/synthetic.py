"""Generated product catalog and supplier feed with rendered product images.

The demo and the tests need matching data without any third-party data set, so
this module invents one: products (garments and gadgets) drawn with Pillow as
simple but recognisable shapes, a clean *catalog* with studio-like shots, and a
noisy *supplier feed* whose titles, prices and photos differ the way real
supplier data does. The true feed -> catalog matches are known.

Offer rows (both catalog and feed) are plain dicts with exactly these keys::

    id           str              "C0001" (catalog) / "S0001" (feed)
    title        str
    description  str | None
    brand        str
    images       list[str]        absolute paths of JPEGs under out_dir/images/
    price        float | None
    currency     str              "EUR" mostly

Hard negatives are built in: some catalog products are *siblings* (same kind,
brand and product line, different colour or pattern, different model number),
and some feed offers are *distractors* whose product is not in the catalog at
all (half of them are unseen siblings of catalog products).

Everything is deterministic given ``seed`` (numpy ``Generator`` streams keyed by
the seed, never Python's ``hash()``), and uses only numpy and Pillow (pyarrow is
imported lazily by :func:`write_parquet`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "BRANDS",
    "COLOURS",
    "KINDS",
    "OFFER_KEYS",
    "PATTERNS",
    "SyntheticData",
    "contact_sheet",
    "generate",
    "render_product",
    "write_parquet",
]

IMAGE_SIZE = 256
_SS = 2  # supersampling factor for drawing
OFFER_KEYS = ("id", "title", "description", "brand", "images", "price", "currency")

# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    group: str  # "garment" or "gadget"
    noun: str  # catalog noun
    qualifiers: tuple[str, ...]  # product-line words, one per family
    feed_nouns: tuple[str, ...]  # abbreviations / synonyms used by suppliers
    price: tuple[float, float]  # EUR range
    features: tuple[str, ...]  # description sentences


KINDS: dict[str, _Kind] = {
    "tshirt": _Kind(
        "garment", "T-Shirt", ("Crew", "Classic", "Basic"),
        ("Tee", "Tshirt", "T Shirt", "T-Shirt"), (12, 45),
        ("Made from soft combed cotton with a relaxed fit",
         "Ribbed crew neckline and short sleeves",
         "Pre-shrunk jersey that keeps its shape wash after wash"),
    ),
    "dress": _Kind(
        "garment", "Dress", ("Midi", "Summer", "Wrap"),
        ("Dress", "Drss", "Frock"), (35, 130),
        ("A flowing skirt with a fitted waist",
         "Sleeveless cut with thin shoulder straps",
         "Lightweight viscose that drapes beautifully"),
    ),
    "trousers": _Kind(
        "garment", "Trousers", ("Chino", "Slim", "Cargo"),
        ("Pants", "Trouser", "Trs", "Trousers"), (30, 110),
        ("Straight leg with a mid-rise waist and belt loops",
         "Stretch twill for all-day comfort",
         "Zip fly with button closure and side pockets"),
    ),
    "hoodie": _Kind(
        "garment", "Hoodie", ("Pullover", "Fleece", "Heavyweight"),
        ("Hoody", "Hooded Sweatshirt", "Hoodie", "Hdy"), (35, 95),
        ("Brushed fleece lining with a kangaroo pocket",
         "Drawstring hood and ribbed cuffs",
         "A cosy layer for cold mornings"),
    ),
    "skirt": _Kind(
        "garment", "Skirt", ("Pleated", "A-Line", "Mini"),
        ("Skirt", "Skrt"), (25, 85),
        ("Knife pleats that move as you walk",
         "High waistband with a button fastening",
         "Lined and easy to pair with knitwear"),
    ),
    "sneaker": _Kind(
        "garment", "Sneakers", ("Running", "Court", "Canvas"),
        ("Trainers", "Sneaker", "Shoes", "Snkrs"), (45, 160),
        ("Cushioned midsole and a grippy rubber outsole",
         "Lace-up closure with a padded collar",
         "Breathable upper for everyday wear"),
    ),
    "cap": _Kind(
        "garment", "Cap", ("Baseball", "Snapback", "Trucker"),
        ("Cap", "Hat", "Bball Cap"), (12, 40),
        ("Curved brim with an adjustable strap",
         "Six-panel crown with embroidered eyelets",
         "Structured front that keeps its shape"),
    ),
    "phone": _Kind(
        "gadget", "Smartphone", ("Pro", "Lite", "Max"),
        ("Phone", "Smrtphn", "Mobile Phone", "Smartphone"), (250, 1200),
        ("A bright OLED display with thin bezels",
         "Dual camera with night mode",
         "All-day battery and fast charging"),
    ),
    "laptop": _Kind(
        "gadget", "Laptop", ("Slim", "Studio", "Ultra"),
        ("Notebook", "Lptp", "Laptop", "Ultrabook"), (500, 2200),
        ("A thin aluminium chassis with a backlit keyboard",
         "Fourteen inch display and a large glass touchpad",
         "Fanless design that stays silent"),
    ),
    "headphones": _Kind(
        "gadget", "Headphones", ("Over-Ear", "Wireless", "Studio"),
        ("Hdphn", "Headset", "Hdphns", "Headphone"), (40, 400),
        ("Active noise cancelling with plush ear cushions",
         "Foldable headband and a carry pouch",
         "Long battery life and low-latency Bluetooth"),
    ),
    "watch": _Kind(
        "gadget", "Watch", ("Smart", "Sport", "Classic"),
        ("Smartwatch", "Wtch", "Watch", "Wrist Watch"), (60, 450),
        ("Round dial with a scratch-resistant glass",
         "Heart-rate sensor and sleep tracking",
         "Soft silicone strap with a pin buckle"),
    ),
    "camera": _Kind(
        "gadget", "Camera", ("Mirrorless", "Compact", "Travel"),
        ("Cam", "Camera", "Digicam"), (200, 1800),
        ("Large sensor and a fast prime lens",
         "Electronic viewfinder and a deep grip",
         "Shoots crisp video in low light"),
    ),
    "speaker": _Kind(
        "gadget", "Speaker", ("Bluetooth", "Portable", "Party"),
        ("Spkr", "BT Speaker", "Speaker", "Loudspeaker"), (30, 350),
        ("Punchy bass from a compact body",
         "Splash-proof fabric grille",
         "Pairs with a second unit for stereo sound"),
    ),
}

#: colour name -> (RGB, supplier synonyms)
COLOURS: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {
    "red": ((214, 38, 38), ("scarlet", "red")),
    "crimson": ((150, 18, 45), ("dark red", "crimson", "burgundy")),
    "navy": ((28, 38, 92), ("dark blue", "navy blue", "marine")),
    "blue": ((45, 115, 220), ("royal blue", "blue", "cobalt")),
    "green": ((46, 150, 72), ("emerald", "green", "grn")),
    "black": ((28, 28, 30), ("jet black", "blk", "black")),
    "white": ((244, 244, 240), ("snow white", "wht", "white")),
    "yellow": ((246, 206, 40), ("lemon", "yellow", "yllw")),
    "orange": ((240, 128, 30), ("tangerine", "orange")),
    "pink": ((240, 150, 185), ("rose", "light pink", "pink")),
    "grey": ((128, 130, 134), ("gray", "ash grey", "grey")),
    "beige": ((214, 192, 152), ("sand", "camel", "beige")),
    "purple": ((118, 60, 160), ("violet", "lilac", "purple")),
}

#: pattern -> (catalog title word, supplier synonyms, description adjective)
PATTERNS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "solid": ("", (), ""),
    "stripes": ("Striped", ("Stripe", "Stripes", "Striped", "Strpd"), "striped"),
    "dots": ("Dotted", ("Polka Dot", "Dots", "Dotted"), "polka-dot"),
    "checks": ("Checked", ("Check", "Plaid", "Checkered"), "checked"),
}

BRANDS: tuple[str, ...] = (
    "Nordwind", "Kestrelle", "Alvora", "Tidemark", "Zentrix", "Lumora",
    "Quillon", "Brightforge", "Corvane", "Halvik", "Vexora", "Solenne",
    "Ironleaf", "Marwick", "Ostrel", "Pellara",
)

_MODEL_LETTERS = "ABCDEFGHJKLMNPRSTVWXZ"
_PATTERN_P = {"solid": 0.4, "stripes": 0.2, "dots": 0.2, "checks": 0.2}
_SELLER_NOISE = ("| free shipping", "- NEW", "(sale)", "- in stock", "*hot deal*", "[original]")


# --------------------------------------------------------------------------
# Public data container
# --------------------------------------------------------------------------


@dataclass
class SyntheticData:
    """A generated catalog, a supplier feed and the true matches.

    ``products`` is extra ground truth for analysis: offer id -> attributes of
    the product shown (``product``, ``kind``, ``group``, ``brand``,
    ``colour``, ``pattern``, ``model``, ``family``). Siblings share ``family``.
    """

    catalog: list[dict]
    feed: list[dict]
    truth: list[tuple[str, str]]
    image_dir: Path
    products: dict[str, dict] = field(default_factory=dict)


@dataclass
class _Product:
    key: str
    kind: str
    brand: str
    qualifier: str
    colour: str
    pattern: str
    model: str  # "XR-4410"
    family: int
    base_price: float
    style: int  # small per-family drawing variation seed

    @property
    def spec(self) -> _Kind:
        return KINDS[self.kind]

    def attrs(self) -> dict[str, Any]:
        return {
            "product": self.key, "kind": self.kind, "group": self.spec.group,
            "brand": self.brand, "colour": self.colour, "pattern": self.pattern,
            "model": self.model, "family": self.family,
        }


# --------------------------------------------------------------------------
# Product universe
# --------------------------------------------------------------------------


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _pick_pattern(rng: np.random.Generator, kind: str) -> str:
    if KINDS[kind].group != "garment":
        return "solid"
    names = list(_PATTERN_P)
    return names[int(rng.choice(len(names), p=list(_PATTERN_P.values())))]


class _Universe:
    """Creates product families and unique model numbers."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.families: list[dict] = []
        self.used_digits: set[str] = set()
        self.used_prefixes: set[str] = set()
        self.n = 0

    def _digits(self, near: int | None) -> str:
        for _ in range(1000):
            if near is None:
                d = int(self.rng.integers(1000, 10000))
            else:  # siblings get close model numbers (e.g. 4410 -> 4420)
                d = near + int(self.rng.integers(-9, 10)) * 10 + int(self.rng.integers(0, 10))
                if not 1000 <= d <= 9999:
                    continue
            s = f"{d:04d}"
            if s not in self.used_digits:
                self.used_digits.add(s)
                return s
        raise RuntimeError("ran out of model numbers")

    def new_family(self) -> dict:
        rng = self.rng
        kind = _pick(rng, list(KINDS))
        for _ in range(1000):
            prefix = _pick(rng, _MODEL_LETTERS) + _pick(rng, _MODEL_LETTERS)
            if prefix not in self.used_prefixes:
                break
        self.used_prefixes.add(prefix)
        lo, hi = KINDS[kind].price
        fam = {
            "index": len(self.families),
            "kind": kind,
            "brand": _pick(rng, BRANDS),
            "qualifier": _pick(rng, KINDS[kind].qualifiers),
            "prefix": prefix,
            "anchor": None,
            "price": float(rng.uniform(lo, hi)),
            "style": int(rng.integers(0, 1 << 30)),
            "combos": set(),
        }
        self.families.append(fam)
        return fam

    def new_variant(self, fam: dict) -> _Product:
        rng = self.rng
        kind = fam["kind"]
        combo = None
        for _ in range(200):
            if not fam["combos"]:
                combo = (_pick(rng, list(COLOURS)), _pick_pattern(rng, kind))
            else:
                # sibling: change colour, or (garments) only the pattern
                base = sorted(fam["combos"])[int(rng.integers(len(fam["combos"])))]
                if KINDS[kind].group == "garment" and rng.random() < 0.4:
                    combo = (base[0], _pick_pattern(rng, kind))
                else:
                    combo = (_pick(rng, list(COLOURS)), base[1])
            if combo not in fam["combos"]:
                break
        else:  # pragma: no cover - exhaustively unlikely
            raise RuntimeError("could not find a new variant")
        fam["combos"].add(combo)
        digits = self._digits(fam["anchor"])
        if fam["anchor"] is None:
            fam["anchor"] = int(digits)
        self.n += 1
        price = fam["price"] * (1.0 + 0.05 * (combo[1] != "solid"))
        return _Product(
            key=f"P{self.n:04d}", kind=kind, brand=fam["brand"],
            qualifier=fam["qualifier"], colour=combo[0], pattern=combo[1],
            model=f"{fam['prefix']}-{digits}", family=fam["index"],
            base_price=price, style=fam["style"],
        )


# --------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------

RGB = tuple[int, int, int]


def _lum(c: RGB) -> float:
    return (0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]) / 255.0


def _mix(c: RGB, d: RGB, t: float) -> RGB:
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(c, d, strict=True))  # type: ignore[return-value]


def _shade(c: RGB, f: float) -> RGB:
    return _mix(c, (0, 0, 0), 1.0 - f)


def _edge(c: RGB) -> RGB:
    """Outline colour: darker for light colours, lighter for very dark ones."""
    return _mix(c, (235, 235, 235), 0.35) if _lum(c) < 0.18 else _shade(c, 0.55)


class _Pen:
    """ImageDraw wrapper taking coordinates in 256-pixel space."""

    def __init__(self, img: Image.Image, k: int = _SS):
        self.img = img
        self.d = ImageDraw.Draw(img)
        self.k = k

    def _p(self, pts):
        return [(x * self.k, y * self.k) for x, y in pts]

    def _b(self, box):
        return [v * self.k for v in box]

    def poly(self, pts, fill=None, outline=None, width=1):
        self.d.polygon(self._p(pts), fill=fill, outline=outline,
                       width=max(1, int(width * self.k)))

    def ellipse(self, box, fill=None, outline=None, width=1):
        self.d.ellipse(self._b(box), fill=fill, outline=outline, width=max(1, int(width * self.k)))

    def circle(self, cx, cy, r, **kw):
        self.ellipse((cx - r, cy - r, cx + r, cy + r), **kw)

    def rrect(self, box, r, fill=None, outline=None, width=1):
        self.d.rounded_rectangle(self._b(box), radius=r * self.k, fill=fill, outline=outline,
                                 width=max(1, int(width * self.k)))

    def line(self, pts, fill, width=1):
        self.d.line(self._p(pts), fill=fill, width=max(1, int(width * self.k)), joint="curve")

    def arc(self, box, start, end, fill, width=1):
        self.d.arc(self._b(box), start, end, fill=fill, width=max(1, int(width * self.k)))

    def pieslice(self, box, start, end, fill=None, outline=None, width=1):
        self.d.pieslice(self._b(box), start, end, fill=fill, outline=outline,
                        width=max(1, int(width * self.k)))

    def chord(self, box, start, end, fill=None, outline=None, width=1):
        self.d.chord(self._b(box), start, end, fill=fill, outline=outline,
                     width=max(1, int(width * self.k)))


def _pattern_image(colour: RGB, pattern: str, style: int, size: int) -> Image.Image:
    """A size x size RGB swatch of the fabric."""
    if pattern == "solid":
        return Image.new("RGB", (size, size), colour)
    second = (36, 40, 64) if _lum(colour) > 0.62 else (246, 244, 238)
    k = size / IMAGE_SIZE
    ax = np.arange(size, dtype=np.float32)
    period = (20 + 4 * (style % 3)) * k
    band = ((ax // (period / 2)) % 2 == 0).astype(np.float32)
    if pattern == "stripes":
        t = np.broadcast_to(band[:, None], (size, size))
    elif pattern == "checks":
        t = 0.42 * (band[:, None] + band[None, :])
    elif pattern == "dots":
        sp = period * 0.9
        row = np.floor(ax / sp)[:, None]
        dx = (ax[None, :] + (row % 2) * sp / 2) % sp - sp / 2
        dy = (ax % sp - sp / 2)[:, None]
        t = ((dx * dx + dy * dy) < (sp * 0.24) ** 2).astype(np.float32)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    mask = Image.fromarray(np.ascontiguousarray(t * 255).astype(np.uint8), "L")
    return Image.composite(Image.new("RGB", (size, size), second),
                           Image.new("RGB", (size, size), colour), mask)


# Garment shapes: a list of primitives (name, *args) filled with the fabric,
# plus a detail function drawing seams etc. on top. Coordinates: 256 space.

def _neck(cx, y0, w, depth, n=7):
    return [(cx + w * math.cos(math.pi * i / (n - 1)), y0 + depth * math.sin(math.pi * i / (n - 1)))
            for i in range(n)]


def _shape_tshirt():
    neck = _neck(128, 36, 30, 18)  # from right to left
    pts = [(98, 36), (58, 48), (16, 96), (44, 126), (70, 106), (70, 224), (186, 224),
           (186, 106), (212, 126), (240, 96), (198, 48)] + neck
    return [("poly", pts)]


def _detail_tshirt(p: _Pen, c: RGB):
    e = _edge(c)
    p.line(_neck(128, 36, 30, 18), e, 5)
    p.line([(70, 106), (64, 52)], e, 1.5)
    p.line([(186, 106), (192, 52)], e, 1.5)
    p.line([(72, 214), (184, 214)], e, 1.2)
    p.line([(20, 100), (46, 122)], e, 1.2)
    p.line([(236, 100), (210, 122)], e, 1.2)


def _shape_dress():
    hem = [(206, 220), (170, 230), (128, 233), (86, 230), (50, 220)]
    pts = [(102, 26), (111, 26), (118, 56), (138, 56), (145, 26), (154, 26), (164, 72),
           (150, 112)] + hem + [(106, 112), (92, 72)]
    return [("poly", pts)]


def _detail_dress(p: _Pen, c: RGB):
    e = _edge(c)
    p.line([(106, 112), (150, 112)], e, 4)
    p.line([(118, 56), (128, 62), (138, 56)], e, 2)
    for x0, x1 in ((118, 98), (128, 128), (138, 158)):
        p.line([(x0, 114), (x1, 228)], _shade(c, 0.8) if _lum(c) > 0.18 else e, 1.2)


def _shape_trousers():
    return [("poly", [(76, 26), (180, 26), (180, 44), (76, 44)]),
            ("poly", [(76, 44), (180, 44), (198, 230), (142, 230), (128, 102), (114, 230),
                      (58, 230)])]


def _detail_trousers(p: _Pen, c: RGB):
    e = _edge(c)
    p.line([(76, 44), (180, 44)], e, 2)
    for x in (90, 118, 138, 166):
        p.line([(x, 26), (x, 46)], e, 2.5)
    p.line([(128, 44), (128, 100)], e, 1.5)
    p.line([(128, 44), (138, 44), (138, 86), (128, 98)], e, 1.2)
    p.line([(80, 50), (98, 72)], e, 1.5)
    p.line([(176, 50), (158, 72)], e, 1.5)
    p.line([(60, 220), (114, 220)], e, 1.5)
    p.line([(142, 220), (197, 220)], e, 1.5)
    p.circle(128, 35, 3, fill=e)


def _shape_hoodie():
    neck = _neck(128, 40, 26, 14)
    body = [(102, 40), (62, 52), (34, 112), (20, 206), (48, 214), (72, 124), (72, 226),
            (184, 226), (184, 124), (208, 214), (236, 206), (222, 112), (194, 52)] + neck
    return [("ellipse", (86, 10, 170, 78)), ("poly", body)]


def _detail_hoodie(p: _Pen, c: RGB):
    e = _edge(c)
    p.ellipse((104, 22, 152, 62), fill=_shade(c, 0.45) if _lum(c) > 0.1 else (70, 70, 74))
    p.line([(118, 58), (114, 104)], (235, 235, 230) if _lum(c) < 0.6 else (60, 60, 60), 2.5)
    p.line([(138, 58), (142, 104)], (235, 235, 230) if _lum(c) < 0.6 else (60, 60, 60), 2.5)
    p.poly([(94, 166), (162, 166), (176, 214), (80, 214)], outline=e, width=2)
    p.line([(22, 194), (48, 201)], e, 3)
    p.line([(234, 194), (208, 201)], e, 3)
    p.line([(72, 216), (184, 216)], e, 3)
    p.line([(72, 124), (64, 56)], e, 1.5)
    p.line([(184, 124), (192, 56)], e, 1.5)


def _shape_skirt():
    hem = [(214, 206), (172, 216), (128, 219), (84, 216), (42, 206)]
    return [("poly", [(84, 44), (172, 44), (172, 62), (84, 62)]),
            ("poly", [(84, 62), (172, 62)] + hem)]


def _detail_skirt(p: _Pen, c: RGB):
    e = _edge(c)
    p.line([(84, 62), (172, 62)], e, 2)
    for x0, x1 in ((98, 70), (112, 99), (128, 128), (144, 157), (158, 186)):
        p.line([(x0, 63), (x1, 216)], e, 1.3)
    p.circle(160, 53, 3.5, fill=e)


def _shape_sneaker():
    upper = [(36, 172), (34, 118), (50, 96), (80, 90), (90, 70), (108, 74), (104, 102),
             (134, 116), (178, 128), (214, 144), (232, 164), (232, 174)]
    return [("poly", upper)]


def _detail_sneaker(p: _Pen, c: RGB):
    e = _edge(c)
    sole = (236, 236, 230)
    p.rrect((26, 166, 240, 196), 12, fill=sole, outline=(150, 150, 150), width=1.5)
    p.line([(34, 182), (232, 182)], (190, 190, 186), 1.5)
    p.line([(84, 94), (104, 104), (134, 118), (150, 122)], e, 2)
    lace = (250, 250, 250) if _lum(c) < 0.7 else (60, 60, 60)
    for i in range(5):
        x = 104 + i * 10
        y = 104 + i * 3.6
        p.line([(x - 4, y - 8), (x + 6, y + 6)], lace, 2.5)
    p.poly([(40, 168), (38, 122), (52, 102)], outline=e, width=1.5)
    p.line([(176, 128), (196, 170)], e, 1.2)


def _shape_cap():
    return [("pieslice", (42, 58, 198, 218), 180, 360),
            ("poly", [(144, 124), (190, 119), (226, 124), (250, 136), (248, 146), (214, 150),
                      (176, 149), (144, 146)])]


def _detail_cap(p: _Pen, c: RGB):
    e = _edge(c)
    p.arc((84, 58, 156, 218), 180, 360, e, 1.5)
    p.arc((60, 58, 180, 218), 200, 340, e, 1.0)
    p.line([(44, 136), (196, 136)], e, 3)
    p.line([(150, 138), (200, 136), (246, 142)], e, 1.5)
    p.circle(120, 58, 5, fill=_shade(c, 0.7) if _lum(c) > 0.18 else e)
    p.circle(86, 100, 2.5, fill=e)


_GARMENTS = {
    "tshirt": (_shape_tshirt, _detail_tshirt),
    "dress": (_shape_dress, _detail_dress),
    "trousers": (_shape_trousers, _detail_trousers),
    "hoodie": (_shape_hoodie, _detail_hoodie),
    "skirt": (_shape_skirt, _detail_skirt),
    "sneaker": (_shape_sneaker, _detail_sneaker),
    "cap": (_shape_cap, _detail_cap),
}


def _draw_prims(p: _Pen, prims, fill=None, outline=None, width=1):
    for prim in prims:
        name, *args = prim
        if name == "poly":
            p.poly(args[0], fill=fill, outline=outline, width=width)
        elif name == "ellipse":
            p.ellipse(args[0], fill=fill, outline=outline, width=width)
        elif name == "pieslice":
            p.pieslice(args[0], args[1], args[2], fill=fill, outline=outline, width=width)
        else:  # pragma: no cover
            raise ValueError(name)


def _screen(p: _Pen, box, r, style: int):
    """A switched-on display: dark glass with a soft coloured wallpaper, clipped to the screen."""
    hues = ((40, 70, 140), (90, 40, 120), (20, 110, 120), (150, 70, 40))
    w = hues[style % len(hues)]
    tmp = Image.new("RGB", p.img.size, (18, 20, 26))
    q = _Pen(tmp, p.k)
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    q.ellipse((x0 + bw * 0.1, y0 + bh * 0.35, x1 + bw * 0.3, y1 + bh * 0.25), fill=w)
    q.ellipse((x0 - bw * 0.3, y0 + bh * 0.55, x1 - bw * 0.3, y1 + bh * 0.4),
              fill=_mix(w, (255, 255, 255), 0.25))
    mask = Image.new("L", p.img.size, 0)
    _Pen(mask, p.k).rrect(box, r, fill=255)
    p.img.paste(tmp, (0, 0), mask)


def _draw_phone(p: _Pen, c: RGB, style: int):
    e = _edge(c)
    # back of the phone (product colour) with the camera module
    p.rrect((52, 22, 136, 214), 18, fill=c, outline=e, width=2)
    p.rrect((62, 32, 104, 84), 12, fill=_shade(c, 0.8) if _lum(c) > 0.18 else (60, 60, 64),
            outline=e, width=1.5)
    for cx, cy in ((74, 46), (74, 70), (92, 58)):
        p.circle(cx, cy, 7, fill=(30, 30, 34), outline=(120, 120, 126), width=1.5)
    p.circle(94, 150, 9, outline=e, width=2)
    # front of the phone, screen on, overlapping
    p.rrect((118, 38, 204, 236), 18, fill=(22, 22, 26), outline=c, width=3)
    _screen(p, (124, 46, 198, 228), 12, style)
    p.rrect((150, 50, 172, 56), 3, fill=(10, 10, 12))


def _draw_laptop(p: _Pen, c: RGB, style: int):
    e = _edge(c)
    p.rrect((46, 30, 210, 150), 8, fill=c, outline=e, width=2)
    _screen(p, (56, 40, 200, 142), 3, style)
    p.poly([(46, 150), (210, 150), (240, 200), (16, 200)], fill=c, outline=e, width=2)
    key = _shade(c, 0.62) if _lum(c) > 0.18 else (70, 70, 76)
    p.poly([(62, 156), (194, 156), (208, 178), (48, 178)], fill=key)
    for i in range(1, 4):
        y = 156 + i * 5.5
        p.line([(62 - i * 3.5, y), (194 + i * 3.5, y)], _mix(key, c, 0.5), 1)
    p.poly([(106, 182), (150, 182), (153, 195), (103, 195)], outline=e, width=1.5)
    p.line([(16, 200), (240, 200)], _shade(c, 0.5), 3)


def _draw_headphones(p: _Pen, c: RGB, style: int):
    e = _edge(c)
    pad = (40, 40, 44) if _lum(c) > 0.18 else (80, 80, 86)
    p.arc((62, 26, 194, 190), 180, 360, c, 16)
    p.arc((62, 26, 194, 190), 180, 360, e, 2)
    p.arc((74, 38, 182, 178), 195, 345, pad, 6)
    for x0, x1, cx0, cx1 in ((38, 88, 78, 98), (168, 218, 158, 178)):
        mid = (x0 + x1) / 2
        p.rrect((mid - 8, 96, mid + 8, 122), 4, fill=_shade(c, 0.8) if _lum(c) > 0.18 else e)
        p.rrect((cx0, 120, cx1, 196), 10, fill=pad)
        p.rrect((x0, 112, x1, 204), 22, fill=c, outline=e, width=2)
        p.ellipse((x0 + 12, 138, x1 - 12, 178), outline=e, width=1.5)


def _draw_watch(p: _Pen, c: RGB, style: int):
    e = _edge(c)
    p.rrect((100, 6, 156, 96), 12, fill=c, outline=e, width=2)
    p.rrect((100, 160, 156, 250), 12, fill=c, outline=e, width=2)
    for y in (192, 206, 220, 234):
        p.circle(128, y, 3, fill=_shade(c, 0.5) if _lum(c) > 0.18 else (90, 90, 90))
    metal = (150, 152, 158) if style % 2 else (70, 70, 76)
    p.rrect((178, 104, 190, 124), 3, fill=metal)
    p.circle(128, 114, 54, fill=metal, outline=(40, 40, 44), width=2)
    face = (245, 245, 240) if style % 3 == 0 else (22, 24, 30)
    ink = (30, 30, 30) if face[0] > 128 else (230, 230, 230)
    p.circle(128, 114, 44, fill=face)
    for i in range(12):
        a = math.pi * 2 * i / 12
        p.line([(128 + 36 * math.cos(a), 114 + 36 * math.sin(a)),
                (128 + 41 * math.cos(a), 114 + 41 * math.sin(a))], ink, 2.5 if i % 3 == 0 else 1.2)
    p.line([(128, 114), (128 + 22 * math.cos(-2.2), 114 + 22 * math.sin(-2.2))], ink, 3.5)
    p.line([(128, 114), (128 + 33 * math.cos(-0.6), 114 + 33 * math.sin(-0.6))], ink, 2)
    p.circle(128, 114, 3, fill=(200, 40, 40))


def _draw_camera(p: _Pen, c: RGB, style: int):
    e = _edge(c)
    dark = _shade(c, 0.7) if _lum(c) > 0.18 else (64, 64, 70)
    p.poly([(92, 86), (106, 54), (154, 54), (168, 86)], fill=c, outline=e, width=2)
    p.rrect((30, 80, 226, 204), 16, fill=c, outline=e, width=2)
    p.rrect((30, 80, 72, 204), 16, fill=dark)
    p.rrect((186, 64, 210, 80), 4, fill=(60, 60, 64))
    p.rrect((110, 62, 150, 78), 4, fill=(40, 44, 56))
    p.circle(142, 144, 52, fill=(52, 52, 56), outline=(30, 30, 32), width=2)
    p.circle(142, 144, 42, fill=(22, 22, 24))
    p.circle(142, 144, 28, fill=(34, 44, 78))
    p.circle(142, 144, 14, fill=(14, 16, 28))
    p.ellipse((126, 126, 140, 138), fill=(170, 180, 210))
    p.rrect((192, 92, 214, 106), 3, fill=(235, 235, 228))


def _draw_speaker(p: _Pen, c: RGB, style: int):
    e = _edge(c)
    grille = _shade(c, 0.72) if _lum(c) > 0.18 else (58, 58, 62)
    p.rrect((68, 22, 188, 232), 28, fill=c, outline=e, width=2)
    p.rrect((80, 40, 176, 216), 18, fill=grille)
    hole = _shade(grille, 0.7) if _lum(grille) > 0.2 else (20, 20, 22)
    for yi in range(11):
        for xi in range(7):
            p.circle(88 + xi * 13.3 + (yi % 2) * 3, 48 + yi * 16, 2, fill=hole)
    p.circle(128, 160, 40, fill=(30, 30, 34), outline=c, width=4)
    p.circle(128, 160, 15, fill=(58, 58, 64))
    p.circle(128, 84, 20, fill=(30, 30, 34), outline=c, width=3)
    p.circle(128, 84, 7, fill=(70, 70, 76))


_GADGETS = {
    "phone": _draw_phone,
    "laptop": _draw_laptop,
    "headphones": _draw_headphones,
    "watch": _draw_watch,
    "camera": _draw_camera,
    "speaker": _draw_speaker,
}


_LIGHT = np.linspace(1.06, 0.88, IMAGE_SIZE, dtype=np.float32)[:, None, None]


def render_product(kind: str, colour: str, pattern: str = "solid", style: int = 0) -> Image.Image:
    """Draw one product on a transparent 256x256 RGBA canvas (no background)."""
    size = IMAGE_SIZE * _SS
    c: RGB = COLOURS[colour][0]
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    if kind in _GARMENTS:
        shape, detail = _GARMENTS[kind]
        prims = shape()
        mask = Image.new("L", (size, size), 0)
        _draw_prims(_Pen(mask), prims, fill=255)
        layer.paste(_pattern_image(c, pattern, style, size), (0, 0), mask)
        pen = _Pen(layer)
        detail(pen, c)
        _draw_prims(pen, prims, outline=_edge(c), width=2)
    elif kind in _GADGETS:
        _GADGETS[kind](_Pen(layer), c, style)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    # 2x2 box downsampling in premultiplied space (no dark fringes)
    layer = layer.convert("RGBa").reduce(_SS).convert("RGBA")
    # soft top-to-bottom lighting for a bit of volume
    arr = np.asarray(layer, dtype=np.float32).copy()
    arr[..., :3] = np.minimum(arr[..., :3] * _LIGHT, 255.0)
    return Image.fromarray(arr.astype(np.uint8), "RGBA")


# --------------------------------------------------------------------------
# Photography: backgrounds, placement, camera effects
# --------------------------------------------------------------------------


_GRID_Y, _GRID_X = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / IMAGE_SIZE


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _catalog_background(rng: np.random.Generator) -> Image.Image:
    base = np.array(_pick(rng, ((250, 250, 250), (245, 245, 242), (240, 242, 246),
                                (248, 246, 240), (236, 236, 236))), np.float32)
    grad = np.linspace(4, -6, IMAGE_SIZE, dtype=np.float32)[:, None, None]
    return _to_image(np.broadcast_to(base + grad, (IMAGE_SIZE, IMAGE_SIZE, 3)))


def _rand_colour(rng: np.random.Generator, lo=20, hi=235) -> np.ndarray:
    return rng.uniform(lo, hi, 3).astype(np.float32)


def _feed_background(rng: np.random.Generator) -> Image.Image:
    n = IMAGE_SIZE
    kind = int(rng.integers(6))
    yy, xx = _GRID_Y, _GRID_X
    if kind == 0:  # plain coloured wall
        bg = np.broadcast_to(_rand_colour(rng), (n, n, 3))
    elif kind == 1:  # gradient
        a, b = _rand_colour(rng), _rand_colour(rng)
        ang = rng.uniform(0, math.pi)
        t = (xx * math.cos(ang) + yy * math.sin(ang))
        t = (t - t.min()) / (t.max() - t.min() + 1e-6)
        bg = a + (b - a) * t[..., None]
    elif kind == 2:  # blotchy texture
        low = rng.uniform(0, 1, (8, 8)).astype(np.float32)
        up = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize(
            (n, n), Image.Resampling.BICUBIC), np.float32)[..., None] / 255.0
        a, b = _rand_colour(rng), _rand_colour(rng)
        bg = a + (b - a) * up
    elif kind == 3:  # wooden table
        wood = np.array((150, 100, 60), np.float32) * rng.uniform(0.6, 1.3)
        planks = np.floor(yy * rng.integers(4, 8))
        grain = np.sin(xx * rng.uniform(20, 60) + planks * 3.1 + np.sin(yy * 40) * 0.8)
        bg = wood * (0.85 + 0.12 * grain[..., None] + 0.06 * (planks % 2)[..., None])
    elif kind == 4:  # floor tiles
        a = _rand_colour(rng, 60, 230)
        b = np.clip(a + rng.uniform(-40, 40, 3), 0, 255).astype(np.float32)
        cells = rng.integers(3, 7)
        chk = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2)[..., None]
        grout = ((np.abs((xx * cells) % 1 - 0.5) > 0.48) | (np.abs((yy * cells) % 1 - 0.5) > 0.48))
        bg = (a + (b - a) * chk) * (1 - 0.3 * grout[..., None])
    else:  # fabric-like diagonal weave
        a = _rand_colour(rng)
        f = rng.uniform(60, 120)
        weave = np.sin((xx + yy) * f) * np.sin((xx - yy) * f * 0.5)
        bg = a * (0.9 + 0.1 * weave[..., None])
    noise = rng.integers(-4, 5, (n, n, 1)).astype(np.float32)  # a little sensor noise
    return _to_image(bg + noise)


_SHADOW = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (0, 0, 0))


def _place(layer: Image.Image, bg: Image.Image, angle: float, scale: float, tx: float, ty: float,
           flip: bool = False, shadow: float = 0.3) -> Image.Image:
    """Rotate/scale/translate the RGBA product and composite it with a soft shadow."""
    n = IMAGE_SIZE
    src = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else layer
    a = math.radians(angle)
    cos, sin = math.cos(a) / scale, math.sin(a) / scale
    cx = cy = n / 2
    ox, oy = cx + tx, cy + ty
    # inverse mapping output (x, y) -> input
    coeffs = (cos, sin, cx - cos * ox - sin * oy, -sin, cos, cy + sin * ox - cos * oy)
    moved = src.convert("RGBa").transform((n, n), Image.Transform.AFFINE, coeffs,
                                          resample=Image.Resampling.BILINEAR).convert("RGBA")
    alpha = moved.getchannel("A")
    if shadow > 0:
        sh = alpha.reduce(4).filter(ImageFilter.GaussianBlur(1.6))
        sh = sh.resize((n, n), Image.Resampling.BILINEAR).point(lambda v: int(v * shadow))
        shifted = Image.new("L", (n, n), 0)
        shifted.paste(sh, (3, 6))
        bg = Image.composite(_SHADOW, bg, shifted)
    bg.paste(moved, (0, 0), alpha)
    return bg


def _catalog_shot(layer: Image.Image, rng: np.random.Generator, shot: int) -> Image.Image:
    if shot == 0:
        angle, scale, tx, ty = 0.0, 0.94, 0.0, 0.0
    else:
        angle = float(rng.uniform(-5, 5))
        scale = float(rng.uniform(0.84, 0.96))
        tx, ty = (float(v) for v in rng.uniform(-8, 8, 2))
    return _place(layer, _catalog_background(rng), angle, scale, tx, ty, shadow=0.22)


def _feed_shot(layer: Image.Image, rng: np.random.Generator) -> Image.Image:
    n = IMAGE_SIZE
    scale = float(rng.uniform(0.7, 1.1))
    angle = float(rng.uniform(-15, 15))
    slack = max(4.0, (1.1 - scale) * 60)
    tx, ty = (float(v) for v in rng.uniform(-slack, slack, 2))
    flip = bool(rng.random() < 0.25)
    img = _place(layer, _feed_background(rng), angle, scale, tx, ty, flip=flip,
                 shadow=float(rng.uniform(0.15, 0.5)))
    if rng.random() < 0.25:  # occasional crop, resized back
        frac = float(rng.uniform(0.72, 0.9))
        w = int(n * frac)
        x0, y0 = (int(v) for v in rng.integers(0, n - w + 1, 2))
        img = img.crop((x0, y0, x0 + w, y0 + w)).resize((n, n), Image.Resampling.BICUBIC)
    # brightness / contrast / slight colour cast through a per-channel lookup table
    contrast = float(rng.uniform(0.75, 1.25))
    bright = float(rng.uniform(-28, 28))
    cast = rng.uniform(-8, 8, 3)
    v = np.arange(256, dtype=np.float64)
    lut = np.concatenate([(v - 128.0) * contrast + 128.0 + bright + c for c in cast])
    img = img.point(np.clip(np.rint(lut), 0, 255).astype(int).tolist())
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 1.3))))
    return img


def _save_jpeg(img: Image.Image, path: Path, quality: int) -> str:
    img.save(path, format="JPEG", quality=int(quality))
    return str(path)


# --------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------


def _catalog_title(p: _Product) -> str:
    words = [p.brand, p.qualifier, p.spec.noun, p.colour.capitalize()]
    if PATTERNS[p.pattern][0]:
        words.append(PATTERNS[p.pattern][0])
    words.append(p.model)
    return " ".join(words)


def _typo(word: str, rng: np.random.Generator) -> str:
    if len(word) < 4 or not word.isalpha():
        return word
    i = int(rng.integers(1, len(word) - 1))
    op = int(rng.integers(3))
    if op == 0:  # swap
        return word[: i - 1] + word[i] + word[i - 1] + word[i + 1:]
    if op == 1:  # drop
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]  # double


def _format_model(model: str, rng: np.random.Generator) -> str:
    prefix, digits = model.split("-")
    fmt = int(rng.integers(6))
    return (
        f"{prefix}-{digits}", f"{prefix}{digits}", f"{prefix.lower()} {digits}",
        f"{prefix} {digits}", f"{prefix.lower()}-{digits}", f"{prefix}.{digits}",
    )[fmt]


def _feed_title(p: _Product, rng: np.random.Generator) -> str:
    spec = p.spec
    brand = p.brand if rng.random() > 0.12 else ""
    qual = p.qualifier if rng.random() > 0.4 else ""
    noun = _pick(rng, spec.feed_nouns) if rng.random() < 0.6 else spec.noun
    colour = _pick(rng, COLOURS[p.colour][1]) if rng.random() < 0.5 else p.colour
    pat_word, pat_syn, _ = PATTERNS[p.pattern]
    pattern = (_pick(rng, pat_syn) if rng.random() < 0.5 else pat_word) if pat_word else ""
    model = _format_model(p.model, rng)

    def j(*parts: str) -> str:
        return " ".join(x for x in parts if x)

    template = int(rng.integers(6))
    if template == 0:
        title = j(brand, qual, noun, colour, pattern, model)
    elif template == 1:
        title = j(brand, model, qual, noun, "-", colour, pattern)
    elif template == 2:
        title = j(qual, noun, brand, colour, pattern, f"({model})")
    elif template == 3:
        title = j(model, brand, noun, colour, pattern)
    elif template == 4:
        title = j(colour, pattern, qual, noun, "by" if brand else "", brand, model)
    else:
        title = ", ".join(x for x in (j(brand, noun), j(colour, pattern), model) if x)
    title = title.strip(" -")
    if rng.random() < 0.15:
        words = title.split(" ")
        cand = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
        if cand:
            i = cand[int(rng.integers(len(cand)))]
            words[i] = _typo(words[i], rng)
            title = " ".join(words)
    if rng.random() < 0.12:
        title = f"{title} {_pick(rng, _SELLER_NOISE)}"
    r = rng.random()
    if r < 0.2:
        title = title.lower()
    elif r < 0.3:
        title = title.upper()
    return title


def _catalog_description(p: _Product, rng: np.random.Generator) -> str | None:
    if rng.random() < 0.1:
        return None
    spec = p.spec
    adj = PATTERNS[p.pattern][2]
    what = " ".join(x for x in (adj, p.colour, p.qualifier.lower(), spec.noun.lower()) if x)
    article = "An" if what[0] in "aeiou" else "A"
    feats = list(rng.permutation(len(spec.features))[: int(rng.integers(1, 3))])
    text = f"{article} {what} from {p.brand}. " + " ".join(f"{spec.features[i]}." for i in feats)
    if rng.random() < 0.3:
        text += f" Model {p.model}."
    return text


def _feed_description(p: _Product, rng: np.random.Generator) -> str | None:
    if rng.random() < 0.35:
        return None
    spec = p.spec
    colour = _pick(rng, COLOURS[p.colour][1]) if rng.random() < 0.5 else p.colour
    adj = PATTERNS[p.pattern][2]
    feat = _pick(rng, spec.features)
    t = int(rng.integers(4))
    if t == 0:
        return f"{p.brand} {spec.noun.lower()} in {colour}{', ' + adj if adj else ''}. {feat}."
    if t == 1:
        return f"{feat}. Colour: {colour}."
    if t == 2:
        return f"Brand new {' '.join(x for x in (adj, colour) if x)} {_pick(rng, spec.feed_nouns).lower()}, ships in 2-3 days."
    return f"{feat}. Genuine {p.brand} product, supplier ref {_format_model(p.model, rng)}."


def _price(x: float) -> float:
    return round(max(1.0, round(x)) - 0.01, 2)


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def generate(
    out_dir: str | Path,
    n_products: int = 60,
    seed: int = 0,
    shots_per_offer: int = 2,
    n_distractors: int | None = None,
) -> SyntheticData:
    """Generate a catalog, a supplier feed and rendered images under ``out_dir``.

    Args:
        out_dir: folder to write into; images go to ``out_dir/images/``.
        n_products: number of catalog products (one catalog offer each).
        seed: everything (rows and image bytes) is a function of the seed.
        shots_per_offer: images per catalog offer (feed offers get 1-3).
        n_distractors: feed offers whose product is not in the catalog;
            default ``round(0.15 * n_products)``.

    Returns:
        :class:`SyntheticData` with ``truth`` as ``(feed_id, catalog_id)`` pairs.
    """
    if n_products < 0 or shots_per_offer < 1:
        raise ValueError("n_products must be >= 0 and shots_per_offer >= 1")
    if n_distractors is None:
        n_distractors = int(round(0.15 * n_products))
    if n_distractors < 0:
        raise ValueError("n_distractors must be >= 0")
    out = Path(out_dir).resolve()
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng([seed, 0])
    uni = _Universe(rng)

    # catalog products: families of 1-3 siblings (same kind/brand/line)
    products: list[_Product] = []
    while len(products) < n_products:
        fam = uni.new_family()
        r = rng.random()
        n_sib = 1 if r < 0.62 else (2 if r < 0.9 else 3)
        for _ in range(min(n_sib, n_products - len(products))):
            products.append(uni.new_variant(fam))
    cat_families = sorted({p.family for p in products})

    # distractors: half unseen siblings of catalog families, half new families
    distractors: list[_Product] = []
    for i in range(n_distractors):
        if cat_families and i % 2 == 0:
            fam = uni.families[cat_families[int(rng.integers(len(cat_families)))]]
        else:
            fam = uni.new_family()
        distractors.append(uni.new_variant(fam))

    # which catalog products the supplier also offers (most of them)
    p_feed = 0.88
    offered = [p for p in products if rng.random() < p_feed]
    if products and not offered:
        offered = [products[0]]

    cat_order = rng.permutation(len(products))
    feed_items = [(p, True) for p in offered] + [(p, False) for p in distractors]
    feed_order = rng.permutation(len(feed_items))

    catalog_ids: dict[str, str] = {}
    catalog: list[dict] = []
    meta: dict[str, dict] = {}
    layers: dict[str, Image.Image] = {}

    def layer_of(p: _Product) -> Image.Image:
        if p.key not in layers:
            layers[p.key] = render_product(p.kind, p.colour, p.pattern, p.style)
        return layers[p.key]

    for n, idx in enumerate(cat_order, start=1):
        p = products[int(idx)]
        oid = f"C{n:04d}"
        orng = np.random.default_rng([seed, 1, n])
        images = []
        for s in range(shots_per_offer):
            img = _catalog_shot(layer_of(p), orng, s)
            images.append(_save_jpeg(img, image_dir / f"{oid}_{s}.jpg", 92))
        price = None if orng.random() < 0.03 else _price(p.base_price)
        catalog.append({
            "id": oid, "title": _catalog_title(p), "description": _catalog_description(p, orng),
            "brand": p.brand, "images": images, "price": price, "currency": "EUR",
        })
        catalog_ids[p.key] = oid
        meta[oid] = p.attrs()

    feed: list[dict] = []
    truth: list[tuple[str, str]] = []
    for n, idx in enumerate(feed_order, start=1):
        p, in_catalog = feed_items[int(idx)]
        oid = f"S{n:04d}"
        orng = np.random.default_rng([seed, 2, n])
        n_img = int(orng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
        images = []
        for s in range(n_img):
            img = _feed_shot(layer_of(p), orng)
            q = int(orng.integers(60, 96))
            images.append(_save_jpeg(img, image_dir / f"{oid}_{s}.jpg", q))
        r = orng.random()
        currency, rate = ("EUR", 1.0) if r < 0.9 else (("USD", 1.08) if r < 0.97 else ("GBP", 0.86))
        price = None
        if orng.random() >= 0.1:
            price = round(p.base_price * float(orng.uniform(0.85, 1.15)) * rate, 2)
        feed.append({
            "id": oid, "title": _feed_title(p, orng), "description": _feed_description(p, orng),
            "brand": p.brand, "images": images, "price": price, "currency": currency,
        })
        meta[oid] = p.attrs()
        if in_catalog:
            truth.append((oid, catalog_ids[p.key]))

    return SyntheticData(catalog=catalog, feed=feed, truth=truth, image_dir=image_dir,
                         products=meta)


def write_parquet(data: SyntheticData, out_dir: str | Path) -> tuple[Path, Path, Path]:
    """Write ``catalog.parquet``, ``feed.parquet`` and ``truth.parquet`` (pyarrow)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    offer_schema = pa.schema([
        ("id", pa.string()), ("title", pa.string()), ("description", pa.string()),
        ("brand", pa.string()), ("images", pa.list_(pa.string())), ("price", pa.float64()),
        ("currency", pa.string()),
    ])
    truth_schema = pa.schema([("feed_id", pa.string()), ("catalog_id", pa.string())])
    paths = (out / "catalog.parquet", out / "feed.parquet", out / "truth.parquet")
    pq.write_table(pa.Table.from_pylist(data.catalog, schema=offer_schema), paths[0])
    pq.write_table(pa.Table.from_pylist(data.feed, schema=offer_schema), paths[1])
    rows = [{"feed_id": f, "catalog_id": c} for f, c in data.truth]
    pq.write_table(pa.Table.from_pylist(rows, schema=truth_schema), paths[2])
    return paths


def contact_sheet(data: SyntheticData, path: str | Path, n_pairs: int = 8,
                  thumb: int = 128) -> Path:
    """Save a PNG grid: per row, a matched pair's catalog images then feed images."""
    by_id = {o["id"]: o for o in data.catalog + data.feed}
    pairs = data.truth[:n_pairs]
    cols = max((len(by_id[c]["images"]) + len(by_id[f]["images"]) for f, c in pairs), default=1)
    sheet = Image.new("RGB", (cols * thumb + 8, max(1, len(pairs)) * thumb), (255, 255, 255))
    for r, (f, c) in enumerate(pairs):
        x = 0
        for k, oid in enumerate((c, f)):
            for img_path in by_id[oid]["images"]:
                with Image.open(img_path) as im:
                    sheet.paste(im.convert("RGB").resize((thumb, thumb)), (x + 8 * k, r * thumb))
                x += thumb
    out = Path(path)
    sheet.save(out)
    return out
