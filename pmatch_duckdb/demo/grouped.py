"""Large generated offer tables with group labels (marketplace dedup shape), text only.

For scaling tests and benchmarks of training and matching: any number of offers, each group (one
product) listed by 1–6 sellers with their own title wording, model-number formatting, typos,
missing brands and prices. Deterministic for a seed; numpy + pyarrow only, no images.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_BRANDS = ["Nordwind", "Lumora", "Ostrel", "Vexora", "Halvik", "Zentrix", "Marwick", "Kestrelle", "Sonnet",
           "Brava", "Quillon", "Tamsin", "Oberlin", "Pexa", "Corvid", "Aurel", "Delmar", "Fenwick", "Graye",
           "Isola", "Jorvik", "Kalder", "Lyric", "Moraine"]
_KINDS = ["usb-c charger", "wireless mouse", "mechanical keyboard", "bluetooth speaker", "smart watch",
          "laptop stand", "hdmi cable", "power bank", "webcam", "gaming headset", "ssd drive", "router",
          "monitor", "desk lamp", "coffee grinder", "electric kettle", "air fryer", "hair dryer", "blender",
          "vacuum cleaner", "running shoe", "rain jacket", "backpack", "water bottle"]
_COLOURS = ["black", "white", "silver", "red", "blue", "green", "grey", "gold", "pink", "navy"]
_SIZES = ["16GB", "32GB", "64GB", "128GB", "256GB", "512GB", "1TB", "20W", "45W", "65W", "100W", "1.5m", "2m",
          "27in", "32in", "500ml", "750ml", "1L", "small", "medium", "large"]
_NOISE = ["free shipping", "new", "2024 model", "genuine", "fast delivery", "in stock", "best price", "eu plug"]


def _model(rng: np.random.Generator) -> str:
    letters = "".join(chr(65 + int(c)) for c in rng.integers(0, 26, int(rng.integers(2, 4))))
    return f"{letters}-{int(rng.integers(100, 99999))}"


def _format_model(model: str, rng: np.random.Generator) -> str:
    prefix, digits = model.split("-")
    return (f"{prefix}-{digits}", f"{prefix}{digits}", f"{prefix.lower()} {digits}", f"{prefix.lower()}{digits}",
            f"{prefix}.{digits}")[int(rng.integers(5))]


def _typo(word: str, rng: np.random.Generator) -> str:
    if len(word) < 5 or not word.isalpha():
        return word
    i = int(rng.integers(1, len(word) - 1))
    return word[:i] + word[i + 1:]


def grouped_offers(n: int, seed: int = 0, max_group: int = 6) -> pa.Table:
    """``n`` offers: columns ``id``, ``title``, ``brand``, ``description``, ``price``, ``group_id``.

    Group sizes are 1..``max_group`` (skewed towards small groups, as on a marketplace), so about
    ``n / 2.3`` products; siblings (same brand and kind, another model/colour/size) make hard negatives.
    """
    rng = np.random.default_rng(seed)
    ids, titles, brands, descs, prices, groups = [], [], [], [], [], []
    sizes_p = np.array([0.3, 0.3, 0.2, 0.1, 0.06, 0.04][:max_group])
    g = 0
    while len(ids) < n:
        brand, kind = _BRANDS[int(rng.integers(len(_BRANDS)))], _KINDS[int(rng.integers(len(_KINDS)))]
        line = ["Pro", "Max", "Lite", "Plus", "Air", "One", "Mini", "Ultra"][int(rng.integers(8))]
        for _ in range(int(rng.integers(1, 4))):  # a product line: siblings share brand, kind and line
            model, colour = _model(rng), _COLOURS[int(rng.integers(len(_COLOURS)))]
            size = _SIZES[int(rng.integers(len(_SIZES)))]
            base_price = float(np.exp(rng.normal(4.0, 1.0)))
            members = int(rng.choice(np.arange(1, len(sizes_p) + 1), p=sizes_p / sizes_p.sum()))
            for _m in range(members):
                if len(ids) >= n:
                    break
                words = [brand if rng.random() > 0.15 else "", line, kind, colour if rng.random() > 0.3 else "",
                         size if rng.random() > 0.4 else "", _format_model(model, rng) if rng.random() > 0.2 else ""]
                order = rng.permutation(len(words)) if rng.random() < 0.4 else np.arange(len(words))
                words = [_typo(words[i], rng) if rng.random() < 0.05 else words[i] for i in order]
                title = " ".join(w for w in words if w)
                if rng.random() < 0.15:
                    title += " " + _NOISE[int(rng.integers(len(_NOISE)))]
                if rng.random() < 0.2:
                    title = title.lower()
                ids.append(f"o{len(ids):07d}")
                titles.append(title)
                brands.append(brand if rng.random() > 0.3 else None)
                descs.append(None if rng.random() < 0.5 else
                             f"{brand} {kind} in {colour}, {size}. Model {model}. {line} series.")
                prices.append(None if rng.random() < 0.1 else round(base_price * float(rng.uniform(0.85, 1.15)), 2))
                groups.append(f"g{g:07d}")
            g += 1
    return pa.table({"id": pa.array(ids, pa.string()), "title": pa.array(titles, pa.string()),
                     "brand": pa.array(brands, pa.string()), "description": pa.array(descs, pa.string()),
                     "price": pa.array(prices, pa.float64()), "group_id": pa.array(groups, pa.string())})


def hashed_text_vectors(texts: list[str | None], dim: int = 384) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in text encoder for scaling runs: hashed word and char-3-gram counts, randomly projected
    (fixed seed) and L2-normalised. Similar titles get similar vectors; costs microseconds, not a model."""
    from ..features.offer_features import hashed_lexical

    valid = np.array([isinstance(t, str) and bool(t.strip()) for t in texts], dtype=bool)
    lex = hashed_lexical([t or "" for t in texts], 1024)
    proj = np.random.default_rng(1234).standard_normal((1024, dim)).astype(np.float32)
    out = lex @ proj
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    out[~valid] = 0.0
    return out.astype(np.float32), valid
