"""A generated catalog whose products are named two ways with disjoint words, bridged by labelled offers: where
knowing the labelled products (the ``known`` pair kind) decides what stage 1's vectors alone cannot. Shared by the
known-products stage test and the Ray path's trained-matcher test."""

from __future__ import annotations

import random

KINDS = ["camera", "phone", "tablet", "speaker"]
N_SEEN, N_NEW = 60, 20


def catalog(seed: int = 0):
    """Products with six made-up words each, named two ways (words 0-2 / words 3-5). The catalog holds both
    namings of every product; the labelled feed (train) holds one offer of each naming and a bridge offer named
    both ways, the validation feed new offers of the same products against the other naming. The test feed holds a
    new offer of each product named the first way; the ``N_NEW`` last products were never labelled."""
    rng = random.Random(seed)

    def word() -> str:
        return "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3))

    cat, feed, feed_te, labels, valid, test = [], [], [], [], [], []
    for p in range(N_SEEN + N_NEW):
        bag, kind = [word() for _ in range(6)], rng.choice(KINDS)

        def title(words: list[str], kind: str = kind) -> str:
            return f"{' '.join(words)} {kind}"

        cat += [(f"C{p}a", title(bag[0:3])), (f"C{p}b", title(bag[3:6]))]
        feed_te.append((f"T{p}", title([bag[2], bag[0]])))
        if p >= N_SEEN:
            continue
        feed += [(f"F{p}a", title([bag[1], bag[2], bag[0]])), (f"F{p}b", title([bag[4], bag[5], bag[3]])),
                 (f"F{p}m", title([bag[0], bag[3]])), (f"V{p}a", title([bag[1], bag[0]])),
                 (f"V{p}b", title([bag[5], bag[4]]))]
        labels += [(f"F{p}a", f"C{p}a", 1), (f"F{p}b", f"C{p}b", 1), (f"F{p}m", f"C{p}a", 1), (f"F{p}m", f"C{p}b", 1)]
        valid += [(f"V{p}a", f"C{p}b", 1), (f"V{p}b", f"C{p}a", 1)]
    for p in range(N_SEEN):
        q, r = (p + 1) % N_SEEN, (p + 7) % N_SEEN
        labels += [(f"F{p}a", f"C{q}a", 0), (f"F{p}b", f"C{r}b", 0), (f"F{p}m", f"C{r}b", 0)]
        valid += [(f"V{p}a", f"C{q}b", 0), (f"V{p}b", f"C{r}a", 0)]
    for p in range(N_SEEN + N_NEW):  # each test offer against its product named the other way, and another product
        q = (p + 1) % N_SEEN if p < N_SEEN else N_SEEN + (p + 1 - N_SEEN) % N_NEW
        test += [(f"T{p}", f"C{p}b"), (f"T{p}", f"C{q}b")]
    return cat, feed, feed_te, labels, valid, test


def create_tables(con) -> None:  # noqa: ANN001
    """``catalog``, ``feed`` (labelled), ``feed_test`` (id, title); ``labels`` and ``valid`` (left_id, right_id, label);
    ``test_pairs`` (source_id, target_id) in ``con``."""
    cat, feed, feed_te, labels, valid, test = catalog()
    for name, rows in (("catalog", cat), ("feed", feed), ("feed_test", feed_te)):
        con.execute(f"CREATE TABLE {name} (id VARCHAR, title VARCHAR)")
        con.executemany(f"INSERT INTO {name} VALUES (?, ?)", rows)
    for name, rows in (("labels", labels), ("valid", valid)):
        con.execute(f"CREATE TABLE {name} (left_id VARCHAR, right_id VARCHAR, label INTEGER)")
        con.executemany(f"INSERT INTO {name} VALUES (?, ?, ?)", rows)
    con.execute("CREATE TABLE test_pairs (source_id VARCHAR, target_id VARCHAR)")
    con.executemany("INSERT INTO test_pairs VALUES (?, ?)", test)
