"""Human verdicts override the model: in ``match_products`` decisions and in entity clusters.

* ``no_match``: the pair is never ``accept``ed (its decision becomes ``reject``) and its two offers
  never end up in one entity — not directly, not through a chain of other accepted pairs;
* ``match``: the pair is ``accept``ed and joins its offers' clusters whatever the model scored;
* ``unsure``: the model's decision stands.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..clusters import DisjointSet
from .labels import PairKey, Verdict

OVERRIDE = {"match": "accept", "no_match": "reject"}


def override_decisions(pairs: Iterable[PairKey], decisions: list[str],
                       verdicts: dict[PairKey, Verdict]) -> tuple[list[str], list[str | None]]:
    """(decisions with the human verdicts applied, the verdict per pair or None)."""
    out, human = [], []
    for key, dec in zip(pairs, decisions, strict=True):
        v = verdicts.get(key)
        verdict = v[0] if v else None
        human.append(verdict)
        out.append(OVERRIDE.get(verdict, dec))
    return out, human


def constrained_edges(accepted: list[tuple[str, str, float]], must_link: list[tuple[str, str]],
                      cannot_link: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Edges to cluster on: human matches first, then accepted pairs by score (best first), skipping any
    edge that would put the two offers of a human ``no_match`` into one component.

    A ``no_match`` pair is never an edge itself; a ``match`` that contradicts another ``no_match``
    through the chain is skipped as well (the explicit ``no_match`` wins)."""
    forbidden = {frozenset(p) for p in cannot_link}
    ds = DisjointSet()
    members: dict[str, set[str]] = {}  # component root -> its offers
    apart: dict[str, set[str]] = {}  # offer -> offers it must not share a component with
    for a, b in cannot_link:
        apart.setdefault(a, set()).add(b)
        apart.setdefault(b, set()).add(a)

    def comp(x: str) -> set[str]:
        r = ds.find(x)
        return members.setdefault(r, {x})

    kept = []
    ordered = [(a, b) for a, b in must_link] + [(a, b) for a, b, _ in sorted(accepted, key=lambda e: -e[2])]
    for a, b in ordered:
        if a == b or frozenset((a, b)) in forbidden:
            continue
        ca, cb = comp(a), comp(b)
        if ca is cb:
            kept.append((a, b))
            continue
        small, big = (ca, cb) if len(ca) <= len(cb) else (cb, ca)
        if any(apart.get(x, set()) & big for x in small):
            continue
        ra, rb = ds.find(a), ds.find(b)
        ds.union(a, b)
        root = ds.find(a)
        merged = ca | cb
        members.pop(ra, None)
        members.pop(rb, None)
        members[root] = merged
        kept.append((a, b))
    return kept
