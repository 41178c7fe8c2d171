"""Entity clusters: connected components over accepted pairs, with ids that stay stable across runs.

An offer is keyed ``table:id``. The registry (a LanceDB table ``_entities_<name>`` under the index
root) remembers each offer's entity. On a new run each component keeps the oldest entity id any of
its members already had (merging components keep the smallest), new offers join existing entities,
and components with no known member get fresh ids.
"""

from __future__ import annotations

from pathlib import Path

import lancedb
import pyarrow as pa

from .locks import write_lock


class DisjointSet:
    """Union-find over hashable keys; each component is represented by its smallest key."""

    def __init__(self) -> None:
        self.parent: dict = {}

    def find(self, x):  # noqa: ANN001, ANN201 - any hashable, orderable key
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a, b) -> None:  # noqa: ANN001
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _entity_number(eid: str) -> int:
    return int(eid[1:])


def assign_entities(root: Path, registry: str, members: list[str], pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Entity id (``E000001`` …) for every offer key in ``members`` and in ``pairs``; persisted."""
    with write_lock(Path(root), f"_entities_{registry}", what="entity registry"):  # read-assign-write, one at a time
        return _assign(root, registry, members, pairs)


def _assign(root: Path, registry: str, members: list[str], pairs: list[tuple[str, str]]) -> dict[str, str]:
    db = lancedb.connect(str(Path(root) / "lancedb"))
    tname = f"_entities_{registry}"
    known: dict[str, str] = {}
    if tname in db.list_tables().tables:
        t = db.open_table(tname).to_arrow()
        known = dict(zip(t["offer_key"].to_pylist(), t["entity_id"].to_pylist(), strict=True))
    ds = DisjointSet()
    for m in members:
        ds.find(m)
    for a, b in pairs:
        ds.union(a, b)
    comps: dict[str, list[str]] = {}
    for x in list(ds.parent):
        comps.setdefault(ds.find(x), []).append(x)
    next_id = 1 + max((_entity_number(e) for e in known.values()), default=0)
    result: dict[str, str] = {}
    taken: set[str] = set()
    # components with more previously known members claim their old ids first (a split cluster:
    # the bigger part keeps the id, the other part gets another of its old ids or a fresh one)
    order = sorted(comps, key=lambda r: (-sum(k in known for k in comps[r]), r))
    for root_key in order:
        keys = comps[root_key]
        old = [e for e in sorted({known[k] for k in keys if k in known}, key=_entity_number) if e not in taken]
        if old:
            eid = old[0]
            taken.add(eid)
        else:
            eid = f"E{next_id:06d}"
            next_id += 1
        for k in keys:
            result[k] = eid
    merged = {**known, **result}
    if merged != known:
        data = pa.table({"offer_key": list(merged), "entity_id": list(merged.values())})
        db.create_table(tname, data, mode="overwrite")
    return result
