-- pmatch-duckdb: indexing, matching and clustering as SQL.
-- Each macro is a thin wrapper over one Python UDF (udfs/matching.py); table and index names are
-- passed as strings, validated and quoted by the UDF (a malicious name fails with a clear error).

-- pm_index(table [, index_name := NULL, rebuild := false]): build or incrementally refresh the
-- LanceDB index of an offer table (id, title, description, brand, images, price, currency).
-- Unchanged rows are not re-embedded; changed rows replaced; deleted rows removed; no change -> no write.
-- Returns one row: index, inserted, updated, deleted, unchanged, total, version, ann_index, seconds.
-- (r.* over a subquery: `unnest(struct)` would call the UDF once per struct field)
CREATE OR REPLACE TEMP MACRO pm_index(tbl, index_name := NULL, rebuild := false) AS TABLE
    SELECT r.* FROM (SELECT CASE
        WHEN typeof(tbl) <> 'VARCHAR' THEN error('pm_index expects the table name as VARCHAR, got ' || typeof(tbl))
        WHEN typeof(index_name) NOT IN ('VARCHAR', '"NULL"')
            THEN error('pm_index: index_name must be VARCHAR, got ' || typeof(index_name))
        WHEN typeof(rebuild) <> 'BOOLEAN' THEN error('pm_index: rebuild must be BOOLEAN, got ' || typeof(rebuild))
        ELSE _pm_index(tbl::VARCHAR, index_name::VARCHAR, rebuild::BOOLEAN) END AS r);

-- match_products(source, target [, k := 10]): candidate matches as rows.
-- * target: a table or view with an index (built on first use if missing; refresh it with pm_index).
-- * source: a table, view or CTE; embedded on the fly, or reused from its own index where unchanged.
-- * match_products('t', 't') (same name, case-insensitive) is dedup mode: no self-pairs, each
--   unordered pair once.
-- Columns: source_table, source_id, target_table, target_id (original types), rank, score (fused, 0..1),
-- text_score, image_score, lexical_score, identifier_match, price_ratio, decision (accept/review/reject),
-- mutual_best (rank 1 for the source and best-scored source for the target: the 1:1 assignment),
-- human_verdict (the pair's verdict in pm_labels, which overrides decision: match -> accept, no_match -> reject).
CREATE OR REPLACE TEMP MACRO match_products(src, tgt, k := 10) AS TABLE
    WITH hits AS (
        SELECT s.id AS source_id, _pm_match(src, tgt, TRY_CAST(k AS BIGINT), to_json(s)) AS h
        FROM query_table(src) AS s
        WHERE _pm_check_offers(src, typeof(s), typeof(k))  -- column types: one clear error, before any row
    ),
    flat AS (
        SELECT source_id, unnest(h, recursive := true) FROM hits
    )
    SELECT src AS source_table, f.source_id, tgt AS target_table, t.id AS target_id,
           f.rank, f.score, f.text_score, f.image_score, f.lexical_score, f.identifier_match,
           f.price_ratio, f.decision,
           -- 1:1 view: the pair is its source's best candidate and no other source scores higher on this target
           (f.rank = 1 AND f.score = max(f.score) OVER (PARTITION BY f.target_key)) AS mutual_best,
           f.human_verdict
    FROM flat AS f
    JOIN query_table(tgt) AS t ON CAST(t.id AS VARCHAR) = f.target_key
    -- dedup mode: keep one direction of each unordered pair (the better-scored one)
    QUALIFY lower(src) <> lower(tgt) OR row_number() OVER (
        PARTITION BY least(CAST(f.source_id AS VARCHAR), f.target_key),
                     greatest(CAST(f.source_id AS VARCHAR), f.target_key)
        ORDER BY f.score DESC, f.rank) = 1
    ORDER BY f.source_id, f.rank;

-- pm_embed_offer(title [, images := NULL, price := NULL, brand := NULL]) -> FLOAT[]: the offer vector
-- match_products searches with: the active trained projection of [text, pooled images, price,
-- lexical] features, or the zero-shot fusion when no matcher is trained. NULL without text or image.
-- Wrong argument types are errors naming pm_embed_offer, the argument and the expected type.
CREATE OR REPLACE TEMP MACRO pm_embed_offer(title, images := NULL, price := NULL, brand := NULL) AS
    CASE
        WHEN typeof(title) NOT IN ('VARCHAR', '"NULL"')
            THEN error('pm_embed_offer: title must be VARCHAR, got ' || typeof(title) || ' (cast it: title::VARCHAR)')
        WHEN typeof(images) NOT IN ('VARCHAR[]', '"NULL"')
            THEN error('pm_embed_offer: images must be VARCHAR[] (image paths), got ' || typeof(images)
                       || ' (one path: images := [path])')
        WHEN NOT (typeof(price) IN ('"NULL"', 'TINYINT', 'SMALLINT', 'INTEGER', 'BIGINT', 'HUGEINT', 'UTINYINT',
                                    'USMALLINT', 'UINTEGER', 'UBIGINT', 'UHUGEINT', 'FLOAT', 'DOUBLE')
                  OR typeof(price) LIKE 'DECIMAL(%')
            THEN error('pm_embed_offer: price must be a number (DOUBLE), got ' || typeof(price)
                       || ' (cast it: price := TRY_CAST(p AS DOUBLE))')
        WHEN typeof(brand) NOT IN ('VARCHAR', '"NULL"')
            THEN error('pm_embed_offer: brand must be VARCHAR, got ' || typeof(brand) || ' (cast it: brand::VARCHAR)')
        ELSE _pm_embed_offer(CAST(title AS VARCHAR), CAST(brand AS VARCHAR), CAST(images AS VARCHAR[]),
                             CAST(price AS DOUBLE))
    END;

-- product_clusters(pairs_table [, registry := 'entities']): connected components over the
-- accepted pairs of a saved match_products result -> (table_name, offer_id, entity_id).
-- Entity ids are persisted in the index folder and stay stable across runs: clusters that persist
-- keep their id, new offers join existing entities, merged clusters keep the oldest id.
CREATE OR REPLACE TEMP MACRO product_clusters(pairs, registry := 'entities') AS TABLE
    SELECT unnest(CASE
        WHEN typeof(pairs) <> 'VARCHAR' THEN error('product_clusters expects the pairs table name as VARCHAR, got '
                                                    || typeof(pairs))
        WHEN typeof(registry) NOT IN ('VARCHAR', '"NULL"')
            THEN error('product_clusters: registry must be VARCHAR, got ' || typeof(registry))
        ELSE _pm_clusters(pairs::VARCHAR, registry::VARCHAR) END, recursive := true);
