"""Lexical channel: identifier tokens, char n-gram TF-IDF and the identifier inverted index."""

from __future__ import annotations

import numpy as np
import pytest

from pmatch_duckdb.features.lexical import (
    CharTfidf,
    IdentifierIndex,
    LexicalWeights,
    document_frequencies,
    identifiers,
    merge_top_k,
    normalize,
)

CORPUS = [
    "Sony Bravia KDL-40V4100 40in LCD TV",
    "Apple iPhone 13 128GB blue",
    "Samsung Galaxy S21 smartphone 256GB",
    "Logitech MX Master 3 wireless mouse",
    "Bose QuietComfort 35 II noise cancelling headphones",
    "Canon EOS 250D digital SLR camera",
    "Dyson V11 cordless vacuum cleaner",
]


# ----------------------------------------------------------------------------------------------
# identifiers()
# ----------------------------------------------------------------------------------------------


def test_identifiers_model_number_without_separators() -> None:
    assert identifiers("Sony KDL-40V4100 40in") == ["kdl40v4100"]


@pytest.mark.parametrize("size", ["40in", "256GB", "18V", "1080p", "55 inch", "12mp"])
def test_identifiers_sizes_and_units_are_not_identifiers(size: str) -> None:
    assert identifiers(size) == []


@pytest.mark.parametrize("text", ["", None, "plain words only", "pack of 12", "set 2024"])
def test_identifiers_plain_words_and_short_numbers(text: str | None) -> None:
    assert identifiers(text) == []


@pytest.mark.parametrize("gtin", ["0027242755", "4006381333931", "00012345678905"])
def test_identifiers_gtin_digits_kept_with_leading_zeros(gtin: str) -> None:
    assert identifiers(f"EAN {gtin} cable") == [gtin]


def test_identifiers_separator_variants_agree() -> None:
    want = ["xj9000b"]
    assert identifiers("Acme widget XJ-9000B black") == want
    assert identifiers("totally different words xj9000b") == want
    assert identifiers("xj/9000b") == want
    assert identifiers("XJ.9000B") == want


def test_identifiers_deduplicated_in_order() -> None:
    assert identifiers("KDL-40V4100 and kdl40v4100, also ZT-1200") == ["kdl40v4100", "zt1200"]


def _identifiers_reference(text: str | None) -> list[str]:
    """identifiers() as first written: every token, checked character by character (the fast one must agree)."""
    import re
    import unicodedata

    from pmatch_duckdb.features.lexical import _ID_TOKEN, _is_measure

    out = []
    for tok in _ID_TOKEN.findall(unicodedata.normalize("NFKC", text or "")):
        t = re.sub(r"[-/.]", "", tok).lower()
        if not any(c.isdigit() for c in t):
            continue
        if any(c.isalpha() for c in t):
            if len(t) >= 4 and sum(c.isdigit() for c in t) >= 2 and not _is_measure(t):
                out.append(t)
        elif len(t) >= 6:
            out.append(t)
    return list(dict.fromkeys(out))


def test_identifiers_equal_the_token_by_token_reference_on_random_text() -> None:
    """The fast path skips digit-less tokens inside the regex (pm_index runs it over every title and description):
    on random strings of letters, digits, separators and spaces it finds exactly what checking each token finds."""
    rng = np.random.default_rng(0)
    alphabet = np.array(list("ab1-./ x9Z_Ⅻ４"))
    texts = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 40)))) for _ in range(20_000)]
    texts += ["Sony KDL-40V4100 40in", "abc.-12 x1y2", "ab-cd-ef-1234", "A1-B2/C3.D4", "win10 4k 128gb 2.5in"]
    differ = [t for t in texts if identifiers(t) != _identifiers_reference(t)]
    assert differ == [], differ[:5]
    assert sum(bool(identifiers(t)) for t in texts) > 1000  # the random texts do hold identifiers


def test_normalize_strips_accents_and_punctuation() -> None:
    assert normalize("Crème Brûlée — SET/6!") == "creme brulee set 6"
    assert normalize(None) == ""


# ----------------------------------------------------------------------------------------------
# CharTfidf
# ----------------------------------------------------------------------------------------------


def test_tfidf_exact_duplicate_first_with_cosine_one() -> None:
    tf = CharTfidf(CORPUS)
    idx, val = tf.top_k([CORPUS[3], CORPUS[5]], k=3)
    assert idx.shape == (2, 3) and val.shape == (2, 3)
    assert idx[:, 0].tolist() == [3, 5]
    assert val[:, 0] == pytest.approx([1.0, 1.0], abs=1e-5)
    # scores sorted descending, the duplicate clearly ahead of the next row
    assert np.all(np.diff(val, axis=1) <= 1e-7)
    assert np.all(val[:, 1] < 0.6)


def test_tfidf_near_duplicate_first() -> None:
    tf = CharTfidf(CORPUS)
    queries = ["sony kdl40v4100 lcd televison", "Logitec MX-Master3 mouse wireless", "dyson v-11 vacum"]
    idx, _ = tf.top_k(queries, k=2)
    assert idx[:, 0].tolist() == [0, 3, 6]


def test_tfidf_k_larger_than_corpus_pads_with_minus_one() -> None:
    tf = CharTfidf(CORPUS[:2])
    idx, val = tf.top_k(["apple iphone"], k=5)
    assert idx[0, 0] == 1
    assert sorted(idx[0, :2].tolist()) == [0, 1]
    assert idx[0, 2:].tolist() == [-1, -1, -1]
    assert val[0, 2:].tolist() == [0.0, 0.0, 0.0]


def test_tfidf_pair_scores_agree_with_top_k() -> None:
    tf = CharTfidf(CORPUS)
    q = ["samsung galaxy s21 256gb", "bose qc35 headphones"]
    idx, val = tf.top_k(q, k=2)
    rows = idx[:, 0]
    assert tf.pair_scores(q, rows) == pytest.approx(val[:, 0], abs=1e-5)


def test_tfidf_empty_text_scores_zero() -> None:
    tf = CharTfidf(CORPUS)
    _, val = tf.top_k(["", "!!!"], k=3)
    assert np.all(val == 0.0)


def test_tfidf_deterministic_across_instances() -> None:
    # crc32 hashing, not Python's salted hash(): two fits give identical scores
    a = CharTfidf(CORPUS).top_k(["canon eos camera"], k=4)
    b = CharTfidf(list(CORPUS)).top_k(["canon eos camera"], k=4)
    assert a[0].tolist() == b[0].tolist()
    assert np.array_equal(a[1], b[1])


def _tied_corpus(n: int, seed: int) -> list[str]:
    """Short texts from a small vocabulary: many exact duplicates and equal scores (ties at every cut)."""
    rng = np.random.default_rng(seed)
    words = ["sony", "kdl40", "tv", "apple", "iphone", "128gb", "blue", "mouse", "mx", "usb", "x100", "eos", ""]
    return [" ".join(rng.choice(words, rng.integers(1, 5))) for _ in range(n)]


def test_tfidf_shards_with_summed_df_equal_the_whole_model() -> None:
    """Lexical shards (Ray path): df summed over shards → each shard's rows are the whole model's rows, and the
    per-shard top-k lists merged are the whole model's top-k, indices and scores, ties included."""
    corpus, queries = _tied_corpus(900, 0), _tied_corpus(120, 1) + ["", "zz"]
    full = CharTfidf(corpus)
    bounds = [(0, 250), (250, 600), (600, 900)]
    df = sum(document_frequencies(corpus[a:b]) for a, b in bounds)
    assert np.array_equal(df, full.df)
    idx, val = np.full((len(queries), 0), -1), np.zeros((len(queries), 0), np.float32)
    for a, b in bounds:
        shard = CharTfidf(corpus[a:b], df=df, n_docs=len(corpus))
        assert (shard.matrix != full.matrix[a:b]).nnz == 0
        i, v = shard.top_k(queries, 25)
        idx, val = merge_top_k(idx, val, np.where(i >= 0, i + a, -1), v, 25)
    want_i, want_v = full.top_k(queries, 25)
    assert np.array_equal(idx, want_i) and np.array_equal(val, want_v)
    assert (np.diff(val, axis=1) == 0).any()  # the corpus does have ties at the cut


def test_tfidf_top_k_ties_broken_by_lower_row() -> None:
    tf = CharTfidf(["usb cable", "hdmi", "usb cable", "usb cable"])
    idx, val = tf.top_k(["usb cable"], k=2)
    assert idx[0].tolist() == [0, 2] and val[0, 0] == val[0, 1]
    idx, _ = tf.top_k(["nothing"], k=3)  # zero-score rows fill a short list: the lowest rows
    assert idx[0].tolist() == [0, 1, 2]


def test_merge_top_k_empty_slots_last_and_padding() -> None:
    i, v = merge_top_k(np.array([[3, -1]]), np.array([[0.5, 0.0]], np.float32), np.array([[7, 1]]),
                       np.array([[0.5, 0.0]], np.float32), 5)
    assert i.tolist() == [[3, 7, 1, -1, -1]] and v.tolist() == [[0.5, 0.5, 0.0, 0.0, 0.0]]


def test_lexical_weights_pair_scores_equal_the_fitted_model() -> None:
    """The transform-only form (idf alone) gives the fitted TF-IDF's pair scores from the two texts."""
    corpus = _tied_corpus(400, 2) + CORPUS
    full = CharTfidf(corpus)
    w = LexicalWeights(document_frequencies(corpus), len(corpus))
    assert w.nbytes() < 9 * 2**20
    rows = np.random.default_rng(3).integers(0, len(corpus), 700)
    texts = [(_tied_corpus(50, 4) + CORPUS + [""])[i % 58] for i in range(700)]
    want = full.pair_scores(texts, rows)
    got = w.pair_scores_texts(texts, [corpus[r] for r in rows])
    assert np.abs(got - want).max() <= 1e-6 and (want > 0.3).sum() > 20
    with pytest.raises(ValueError, match="pair_scores_texts"):
        w.pair_scores_texts(["a"], [])


def test_tfidf_shard_rejects_df_not_covering_it() -> None:
    with pytest.raises(ValueError, match="df and n_docs"):
        CharTfidf(CORPUS, df=document_frequencies(CORPUS))
    with pytest.raises(ValueError, match="cover the shard"):
        CharTfidf(CORPUS, df=document_frequencies(CORPUS[:2]), n_docs=len(CORPUS))


# ----------------------------------------------------------------------------------------------
# IdentifierIndex
# ----------------------------------------------------------------------------------------------


def test_identifier_index_lookup() -> None:
    tokens = [identifiers(t) for t in ["Acme XJ-9000B black", "Acme XJ-7000C", "xj9000b refurbished", "no id"]]
    ix = IdentifierIndex(tokens)
    assert ix.lookup(["xj9000b"]) == [0, 2]
    assert ix.lookup(["xj7000c", "xj9000b"]) == [1, 0, 2]
    assert ix.lookup(["xj9000b", "xj9000b"]) == [0, 2]  # no duplicates
    assert ix.lookup(["zz9999"]) == []
    assert ix.lookup([]) == []


def test_identifier_index_ignores_too_common_tokens() -> None:
    tokens = [["abc123"]] * 4 + [["rare42x"]]
    ix = IdentifierIndex(tokens, max_df=3)
    assert ix.lookup(["abc123"]) == []
    assert ix.lookup(["rare42x"]) == [4]


# ----------------------------------------------------------------------------------------------
# vectorised n-gram hashing and top-k selection equal the per-text / per-cell forms they replaced
# ----------------------------------------------------------------------------------------------


def _varied_texts() -> list[str | None]:
    from pmatch_duckdb.demo.grouped import grouped_offers

    t = grouped_offers(3000, seed=11)
    texts = [f"{b or ''} {x} {d or ''}" for b, x, d in zip(t["brand"].to_pylist(), t["title"].to_pylist(),
                                                          t["description"].to_pylist(), strict=True)]
    return texts + CORPUS + ["", None, "a", "ab", "Ünïcode ñame 日本語 x", "   ", "--", "KDL-40V4100"] + texts[:200]


def test_hashed_counts_equal_the_per_text_crc32_loop() -> None:
    """``_counts`` hashes every n-gram with a numpy CRC-32; the CSR equals the one built from ``_grams``
    (``zlib.crc32`` of each n-gram, one text at a time), bit for bit."""
    import scipy.sparse as sp

    from pmatch_duckdb.features import lexical

    texts = _varied_texts()
    indptr, indices = [0], []
    for t in texts:
        indices.extend(lexical._grams(t))
        indptr.append(len(indices))
    want = sp.csr_matrix((np.ones(len(indices), np.float32), np.asarray(indices, np.int32),
                          np.asarray(indptr, np.int32)), shape=(len(texts), lexical.N_FEATURES))
    want.sum_duplicates()
    got = lexical._counts(texts)
    for part in ("data", "indices", "indptr"):
        assert getattr(got, part).dtype == getattr(want, part).dtype, part
        np.testing.assert_array_equal(getattr(got, part), getattr(want, part))
    assert lexical._counts([]).shape == (0, lexical.N_FEATURES)


def _key_top_k(tf: CharTfidf, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The dense top_k before its selection was rewritten: an int64 (score, row) key per cell, argpartition."""
    q = tf.transform(texts)
    size = tf.matrix_t.shape[1]
    kk = min(k, size)
    idx, val = np.full((len(texts), k), -1, dtype=np.int64), np.zeros((len(texts), k), dtype=np.float32)
    dense = (q @ tf.matrix_t).toarray().astype(np.float32)
    key = np.arange(size) - (np.where(dense > 0, dense, np.float32(0)).view(np.int32).astype(np.int64) << 32)
    part = np.argpartition(key, kk - 1, axis=1)[:, :kk]
    part = np.take_along_axis(part, np.argsort(np.take_along_axis(key, part, axis=1), axis=1), axis=1)
    idx[:, :kk], val[:, :kk] = part, np.take_along_axis(dense, part, axis=1)
    return idx, val


@pytest.mark.parametrize("k", [1, 21, 40])
def test_dense_top_k_equals_the_per_cell_key_selection(k: int) -> None:
    """Many duplicate texts (ties at the cut) and texts sharing nothing (zero-score fill): same rows, same order."""
    texts = [t or "" for t in _varied_texts()]
    tf = CharTfidf(texts[:1500] * 2)
    queries = texts[1400:1700] + ["zzqx", ""]
    got, want = tf.top_k(queries, k), _key_top_k(tf, queries, k)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize(("k", "block", "chunk"), [(21, 4096, 512), (5, 300, 64), (40, 1000, 1000)])
def test_self_top_k_equals_top_k_of_the_corpus(k: int, block: int, chunk: int) -> None:
    """Every row against the corpus with each block pair multiplied once (its transpose serving the other
    side): the same rows, order and float32 scores as ``top_k(corpus)``, ties and zero-score fills included."""
    texts = [t or "" for t in _varied_texts()][:2500]
    texts += texts[:40] + ["", "zzqx", ""]  # duplicates (ties across blocks) and texts sharing nothing
    tf = CharTfidf(texts)
    got, want = tf.self_top_k(k, block, chunk), tf.top_k(texts, k)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(ValueError, match="keep_rows"):
        CharTfidf(texts[:10], keep_rows=False).self_top_k(3)
