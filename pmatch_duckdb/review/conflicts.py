"""Auto-accepted links that contradict another decision, so at least one of them is wrong: the review queue gives
each such set one page (reason ``accept_conflict``), as neither pair need be in the review band.

* Two tables with ``one_match`` (the user says a supplier offer is at most one catalog product): an offer the result
  auto-accepts for two or more products, or for one while a person said match for another
  (:func:`accept_conflicts`).
* One table (deduplication): being the same product is transitive, so auto-accepted links (and matches people gave)
  that chain two offers the model rejects as a pair, or a person said differ, hold a wrong link or a wrong
  rejection. Clusters (connected components of the accepted links) are where one wrong link merges two products
  (:func:`cluster_conflicts`).

A verdict given on such a page is no sample of the scores (an accept with a rival is more often wrong than others at
its score): ``calibrate`` leaves it out (``labels.FOUND``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ..clusters import DisjointSet
from .labels import CONFLICT, PairKey, Verdict, table_key

Offer = tuple[str, str]  # (table key, id)


def _said(v: Verdict | tuple) -> str:
    return v.verdict if isinstance(v, Verdict) else v[0]


def matched_targets(verdicts: dict, tables: set[tuple[str, str]]) -> dict[Offer, set[str]]:
    """(source table, source id) -> the target ids people said ``match`` for, over the pairs of the (source table,
    target table) pairs ``tables`` (table keys). ``verdicts`` as ``queue.build_queue`` takes them."""
    out: dict[Offer, set[str]] = {}
    for key, v in verdicts.items():
        if _said(v) == "match" and (key.source_table, key.target_table) in tables:
            out.setdefault((key.source_table, key.source_id), set()).add(key.target_id)
    return out


def offers_linked_twice(data: list[dict], verdicts: dict[PairKey, Verdict]) -> list[tuple[str, list[str]]]:
    """The source offers people already said match for two or more target products, each with those targets
    (sorted), among the table pairs of a two-table result: a check of ``one_match``, the user's statement that an
    offer is at most one product. Auto-accepts do not count: two of them on one offer are the model's guesses, one
    of them wrong if the statement holds, which is what a one-match review settles."""
    links = matched_targets(verdicts, {(table_key(r["source_table"]), table_key(r["target_table"])) for r in data})
    return sorted((sid, sorted(t)) for (_, sid), t in links.items() if len(t) > 1)


def accept_conflicts(accepts: list[dict], sampled: list[dict], verdicts: dict) -> list[dict]:
    """Two tables, ``one_match``: one page per source offer whose unlabelled auto-accepts (``accepts``), with the
    matches people gave it (``verdicts``, the same tables), link it to two or more target products: its second-best
    accept, or its best where a match verdict stands (the page lists the other). Offers one of whose accepts the
    accept sample (``sampled``) drew are left to that page. Best-scored conflict first; reason ``accept_conflict``."""
    by_offer: dict[Offer, list[dict]] = {}
    for r in accepts:
        if r["key"].source_table != r["key"].target_table:
            by_offer.setdefault((r["key"].source_table, r["key"].source_id), []).append(r)
    in_sample = {(r["key"].source_table, r["key"].source_id) for r in sampled}
    matched = matched_targets(verdicts, {(r["key"].source_table, r["key"].target_table) for r in accepts})
    out = []
    for offer, rows in by_offer.items():
        if offer in in_sample or len(rows) + len(matched.get(offer, ())) < 2:
            continue
        rows.sort(key=lambda it: (-it["score"], it["key"].target_id))
        out.append(rows[0] if matched.get(offer) else rows[1])
    for r in out:
        r["reason"] = CONFLICT
    return sorted(out, key=lambda it: (-it["score"], it["key"].source_id))


#: pairs known to differ examined per cluster in one queue build (each costs a breadth-first search of the cluster;
#: a chained cluster of thousands of offers holds far more): the rest wait for the next round
PER_CLUSTER = 50


def cluster_conflicts(accepts: list[dict], sampled: list[dict], verdicts: dict,
                      rejected_among: Callable[[set[Offer]], dict[PairKey, float]] | None = None) -> list[dict]:
    """One table: the links that hold clusters together against a pair known to differ. The accepted graph is the
    unlabelled auto-accepts (``accepts``) and the matches people gave (``verdicts``); two offers of one connected
    component that a person said differ, or that the result rejects as a pair (``rejected_among``: the rejected
    pairs among the given offers with their scores, read from the result; None: verdicts only), are joined by a path
    of links one of which is wrong (or the rejection is). For each such pair, the weakest unlabelled auto-accept on
    the shortest path between them is queued (reason ``accept_conflict``), once; none where that link was drawn by
    the accept sample (its page asks about it) or the path holds only matches people gave. At most
    :data:`PER_CLUSTER` pairs per cluster are examined, people's no_match first, then the result's rejects from the
    lowest score. Weakest link first."""
    edges: dict[PairKey, dict | None] = {r["key"]: r for r in accepts if r["key"].source_table == r["key"].target_table}
    apart: dict[PairKey, float] = {}  # pair known to differ -> how surely (lower first; people's verdicts -inf)
    for key, v in verdicts.items():
        if key.source_table == key.target_table:
            if _said(v) == "match":
                edges[key] = None  # a person's match: a link, never asked about here
            elif _said(v) == "no_match":
                apart[key] = float("-inf")
    ds, adj = DisjointSet(), {}
    for key in edges:
        a, b = (key.source_table, key.source_id), (key.target_table, key.target_id)
        ds.union(a, b)
        adj.setdefault(a, []).append((b, key))
        adj.setdefault(b, []).append((a, key))
    sizes: dict[Offer, int] = {}
    for node in adj:
        sizes[ds.find(node)] = sizes.get(ds.find(node), 0) + 1
    members = {node for node in adj if sizes[ds.find(node)] >= 3}  # a pair apart inside needs a third offer
    if not members:
        return []
    if rejected_among is not None:
        apart = {**rejected_among(members), **apart}
    in_sample = {r["key"] for r in sampled}
    out: dict[PairKey, dict] = {}
    examined: dict[Offer, int] = {}
    for key in sorted(apart, key=lambda k: (apart[k], k.source_id, k.target_id)):
        x, y = (key.source_table, key.source_id), (key.target_table, key.target_id)
        if x not in members or y not in members or ds.find(x) != ds.find(y) or key in edges:
            continue
        if examined.get(ds.find(x), 0) >= PER_CLUSTER:
            continue
        examined[ds.find(x)] = examined.get(ds.find(x), 0) + 1
        links = [edges[e] for e in _path(adj, x, y) if edges[e] is not None]
        if not links:
            continue
        weakest = min(links, key=lambda r: (r["score"], r["key"].source_id, r["key"].target_id))
        if weakest["key"] not in in_sample:
            out[weakest["key"]] = weakest
    for r in out.values():
        r["reason"] = CONFLICT
    return sorted(out.values(), key=lambda it: (it["score"], it["key"].source_id, it["key"].target_id))


def _path(adj: dict[Offer, list[tuple[Offer, PairKey]]], x: Offer, y: Offer) -> list[PairKey]:
    """The links of a shortest path from ``x`` to ``y`` (breadth first; they are known to be connected)."""
    back: dict[Offer, tuple[Offer, PairKey] | None] = {x: None}
    todo = deque([x])
    while todo:
        node = todo.popleft()
        if node == y:
            break
        for nxt, key in sorted(adj[node], key=lambda t: t[0]):
            if nxt not in back:
                back[nxt] = (node, key)
                todo.append(nxt)
    out, node = [], y
    while back[node] is not None:
        node, key = back[node]
        out.append(key)
    return out
