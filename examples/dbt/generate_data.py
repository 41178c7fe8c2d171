"""Write the raw tables the example dbt project reads (generated: no third-party data).

Raw column names deliberately differ from pmatch's offer-table convention; the staging models map
them. ``--hold-back N`` leaves the last N supplier offers out, so a later run without it "adds"
them (used to show that dbt's incremental index refresh embeds only new rows).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pmatch_duckdb.demo.synthetic import generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="data", help="folder for raw parquet files and images")
    ap.add_argument("--products", type=int, default=24)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--hold-back", type=int, default=0, help="leave the last N supplier offers out")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    data = generate(out, n_products=args.products, seed=args.seed)
    feed = data.feed[: len(data.feed) - args.hold_back] if args.hold_back else data.feed
    pq.write_table(pa.table({
        "sku": [o["id"] for o in data.catalog],
        "product_name": [o["title"] for o in data.catalog],
        "details": [o["description"] for o in data.catalog],
        "maker": [o["brand"] for o in data.catalog],
        "photo_paths": [o["images"] for o in data.catalog],
        "list_price": [o["price"] for o in data.catalog],
        "currency": [o["currency"] for o in data.catalog],
    }), out / "raw_catalog.parquet")
    pq.write_table(pa.table({
        "offer_ref": [o["id"] for o in feed],
        "name": [o["title"] for o in feed],
        "brand_name": [o["brand"] for o in feed],
        "pictures": [o["images"] for o in feed],
        "unit_price": [o["price"] for o in feed],
        "ccy": [o["currency"] for o in feed],
    }), out / "raw_supplier_offers.parquet")
    pq.write_table(pa.table({"feed_id": [a for a, _ in data.truth], "catalog_id": [b for _, b in data.truth]}),
                   out / "truth.parquet")
    print(f"wrote {len(data.catalog)} catalog and {len(feed)} supplier offers to {out}")


if __name__ == "__main__":
    main()
