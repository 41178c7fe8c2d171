"""Tests for the generated demo catalog / supplier feed."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from pmatch_duckdb.demo.synthetic import SyntheticData, generate, write_parquet

N_PRODUCTS = 14
N_DISTRACTORS = 3
SEED = 3
OFFER_KEYS = {"id", "title", "description", "brand", "images", "price", "currency"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SyntheticData:
    out = tmp_path_factory.mktemp("synthetic_a")
    return generate(out, n_products=N_PRODUCTS, seed=SEED, n_distractors=N_DISTRACTORS)


def _rows_without_paths(data: SyntheticData) -> list[dict]:
    """Offer rows with image paths made relative to image_dir (dirs differ per run)."""
    rows = []
    for offer in data.catalog + data.feed:
        row = dict(offer)
        row["images"] = [str(Path(p).relative_to(data.image_dir)) for p in offer["images"]]
        rows.append(row)
    return rows


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


def test_deterministic_same_seed(data: SyntheticData, tmp_path: Path) -> None:
    again = generate(tmp_path, n_products=N_PRODUCTS, seed=SEED, n_distractors=N_DISTRACTORS)
    assert _rows_without_paths(again) == _rows_without_paths(data)
    assert again.truth == data.truth
    assert again.products == data.products
    for a, b in zip(data.catalog + data.feed, again.catalog + again.feed, strict=True):
        for pa, pb in zip(a["images"], b["images"], strict=True):
            assert Path(pa).read_bytes() == Path(pb).read_bytes()


def test_different_seed_differs(data: SyntheticData, tmp_path: Path) -> None:
    other = generate(tmp_path, n_products=N_PRODUCTS, seed=SEED + 1, n_distractors=N_DISTRACTORS)
    assert [o["title"] for o in other.catalog] != [o["title"] for o in data.catalog]
    assert (Path(other.catalog[0]["images"][0]).read_bytes()
            != Path(data.catalog[0]["images"][0]).read_bytes())


def test_counts_and_truth(data: SyntheticData) -> None:
    assert len(data.catalog) == N_PRODUCTS
    cat_ids = [o["id"] for o in data.catalog]
    feed_ids = [o["id"] for o in data.feed]
    assert len(set(cat_ids)) == len(cat_ids) and len(set(feed_ids)) == len(feed_ids)
    assert all(re.fullmatch(r"C\d{4}", i) for i in cat_ids)
    assert all(re.fullmatch(r"S\d{4}", i) for i in feed_ids)

    truth_feed = [f for f, _ in data.truth]
    truth_cat = [c for _, c in data.truth]
    assert set(truth_feed) <= set(feed_ids)
    assert set(truth_cat) <= set(cat_ids)
    # one feed offer per product at most, each feed offer matches at most one product
    assert max(Counter(truth_feed).values()) == 1
    assert max(Counter(truth_cat).values()) == 1
    # "most" catalog products are offered by the supplier
    assert len(data.truth) >= N_PRODUCTS // 2

    distractors = set(feed_ids) - set(truth_feed)
    assert len(distractors) == N_DISTRACTORS
    assert len(data.feed) == len(data.truth) + N_DISTRACTORS
    # distractor products are really absent from the catalog
    cat_products = {data.products[i]["product"] for i in cat_ids}
    assert all(data.products[i]["product"] not in cat_products for i in distractors)
    # and true pairs show the same product
    for f, c in data.truth:
        assert data.products[f] == data.products[c]


def test_default_distractors(tmp_path: Path) -> None:
    d = generate(tmp_path, n_products=7, seed=1, shots_per_offer=1)
    assert len(d.feed) - len(d.truth) == round(0.15 * 7)
    assert all(len(o["images"]) == 1 for o in d.catalog)


def test_offer_rows(data: SyntheticData) -> None:
    for offer in data.catalog + data.feed:
        assert set(offer) == OFFER_KEYS
        assert isinstance(offer["id"], str)
        assert isinstance(offer["title"], str) and offer["title"]
        assert offer["description"] is None or isinstance(offer["description"], str)
        assert isinstance(offer["brand"], str) and offer["brand"]
        assert isinstance(offer["images"], list) and offer["images"]
        assert offer["price"] is None or isinstance(offer["price"], float)
        assert isinstance(offer["currency"], str) and len(offer["currency"]) == 3
    assert all(len(o["images"]) == 2 for o in data.catalog)
    assert all(1 <= len(o["images"]) <= 3 for o in data.feed)
    assert all(o["currency"] == "EUR" for o in data.catalog)


def test_images_exist_and_open(data: SyntheticData) -> None:
    image_dir = data.image_dir
    assert image_dir.is_absolute() and image_dir.name == "images"
    for offer in data.catalog + data.feed:
        for p in offer["images"]:
            path = Path(p)
            assert path.is_absolute() and path.parent == image_dir
            with Image.open(path) as im:
                assert im.format == "JPEG"
                assert im.size == (256, 256)
                im.load()


def test_matched_titles_share_model_digits(data: SyntheticData) -> None:
    by_id = {o["id"]: o for o in data.catalog + data.feed}
    for f, c in data.truth:
        model_digits = _digits(data.products[c]["model"])
        assert len(model_digits) == 4
        assert _digits(by_id[c]["title"]) == model_digits
        assert model_digits in _digits(by_id[f]["title"])


def test_hard_negatives_present(data: SyntheticData) -> None:
    fams = Counter(data.products[o["id"]]["family"] for o in data.catalog)
    sibling_fams = [fam for fam, n in fams.items() if n >= 2]
    assert sibling_fams, "expected at least one family of sibling products"
    for fam in sibling_fams:
        members = [data.products[o["id"]] for o in data.catalog
                   if data.products[o["id"]]["family"] == fam]
        assert len({(m["kind"], m["brand"]) for m in members}) == 1
        assert len({(m["colour"], m["pattern"]) for m in members}) == len(members)
        assert len({m["model"] for m in members}) == len(members)


def test_feed_prices_near_catalog(data: SyntheticData) -> None:
    by_id = {o["id"]: o for o in data.catalog + data.feed}
    for f, c in data.truth:
        pf, pc = by_id[f]["price"], by_id[c]["price"]
        if pf is None or pc is None or by_id[f]["currency"] != "EUR":
            continue
        assert 0.8 <= pf / pc <= 1.2


def test_write_parquet(data: SyntheticData, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    cat_path, feed_path, truth_path = write_parquet(data, tmp_path)
    cat = pq.read_table(cat_path).to_pylist()
    feed = pq.read_table(feed_path).to_pylist()
    truth = pq.read_table(truth_path).to_pylist()
    assert cat == data.catalog
    assert feed == data.feed
    assert [(r["feed_id"], r["catalog_id"]) for r in truth] == data.truth
