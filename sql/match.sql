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
-- human_verdict (the pair's verdict in pm_labels, which overrides decision: match -> accept, no_match -> reject),
-- scored_by (the model whose score this is: 'zero-shot', 'stage1' = the trained matcher, 'pair_scorer' = its pair
-- scorer re-read the pair; the scales differ, and each decision is by the thresholds of the model that scored it).
CREATE OR REPLACE TEMP MACRO match_products(src, tgt, k := 10) AS TABLE
    WITH
    -- `id` always binds (a NULL column where the table has none): _pm_check_offers then names the missing
    -- column, the table and match_products instead of a binder error
    _pm_mp_src AS (FROM query_table(src) UNION ALL BY NAME SELECT NULL AS id WHERE false),
    _pm_mp_tgt AS (FROM query_table(tgt) UNION ALL BY NAME SELECT NULL AS id WHERE false),
    hits AS MATERIALIZED (
        SELECT s.id AS source_id, _pm_match(src, tgt, TRY_CAST(k AS BIGINT), to_json(s)) AS h
        FROM _pm_mp_src AS s
        -- one clear error before any row: column names and types of both tables (their row types, also
        -- when empty), k, and the duplicated ids of the whole source (not only of one 2,048-row chunk)
        WHERE _pm_check_offers(src,
            (SELECT typeof(o) FROM (SELECT 1) AS _pm_one LEFT JOIN query_table(src) AS o ON true LIMIT 1),
            typeof(k), tgt,
            (SELECT typeof(o) FROM (SELECT 1) AS _pm_one LEFT JOIN query_table(tgt) AS o ON true LIMIT 1),
            (SELECT list(d.key ORDER BY d.key) FROM (
                SELECT CAST(id AS VARCHAR) AS key FROM _pm_mp_src WHERE id IS NOT NULL
                GROUP BY ALL HAVING count(*) > 1 ORDER BY key LIMIT 11) AS d))
    ),
    flat AS (
        SELECT source_id, unnest(h, recursive := true) FROM hits
    )
    SELECT src AS source_table, f.source_id, tgt AS target_table, t.id AS target_id,
           f.rank, f.score, f.text_score, f.image_score, f.lexical_score, f.identifier_match,
           f.price_ratio, f.decision,
           -- 1:1 view: the pair is its source's best candidate and no other source scores higher on this target
           (f.rank = 1 AND f.score = max(f.score) OVER (PARTITION BY f.target_key)) AS mutual_best,
           f.human_verdict, f.scored_by
    FROM flat AS f
    JOIN _pm_mp_tgt AS t ON CAST(t.id AS VARCHAR) = f.target_key
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

-- score_pairs(source, target, pairs): score GIVEN pairs instead of searching (last year's matches, a
-- supplier's claimed links, a labelled sample). `pairs`: a table/view/CTE with columns source_id and
-- target_id (ids of `source` and `target`). One row per input pair, in input order, with the columns of
-- match_products (scored by the same code: matching.score_given), plus `note`: why a row has no score
-- (a NULL id; a self pair in dedup mode, source = target). rank: the pair's place in match_products' order
-- for its source (k = 10: the pairs it would return, by score, then its other candidates and the given pairs,
-- by score), so rank <= 10 says match_products would return it; mutual_best over the given pairs.
-- An id that is not in its table is an error naming it.
CREATE OR REPLACE TEMP MACRO score_pairs(src, tgt, pairs) AS TABLE
    WITH _pm_sp_pairs AS MATERIALIZED (  -- (missing columns bind as NULL; _pm_check_pairs names them)
        SELECT row_number() OVER () AS pair_no, q.source_id, q.target_id
        FROM (FROM query_table(pairs) UNION ALL BY NAME SELECT NULL AS source_id, NULL AS target_id WHERE false) AS q
    ),
    _pm_sp_src AS (
        SELECT CAST(o.id AS VARCHAR) AS source_key, CAST(to_json(o) AS VARCHAR) AS source_row,
               count(*) OVER (PARTITION BY CAST(o.id AS VARCHAR)) AS copies
        FROM (FROM query_table(src) UNION ALL BY NAME SELECT NULL AS id WHERE false) AS o
    ),
    _pm_sp_items AS (
        SELECT list({'pair_no': p.pair_no, 'source_key': CAST(p.source_id AS VARCHAR),
                     'target_key': CAST(p.target_id AS VARCHAR), 'source_row': s.source_row,
                     'copies': s.copies} ORDER BY p.pair_no) AS l
        FROM _pm_sp_pairs AS p LEFT JOIN (SELECT DISTINCT ON (source_key) * FROM _pm_sp_src) AS s
            ON s.source_key = CAST(p.source_id AS VARCHAR)
    ),
    _pm_sp_scored AS (
        SELECT _pm_score_pairs(src, tgt, l) AS r FROM _pm_sp_items
        WHERE _pm_check_pairs(src,
            (SELECT typeof(o) FROM (SELECT 1) AS _pm_one LEFT JOIN query_table(src) AS o ON true LIMIT 1), tgt,
            (SELECT typeof(o) FROM (SELECT 1) AS _pm_one LEFT JOIN query_table(tgt) AS o ON true LIMIT 1), pairs,
            (SELECT typeof(o) FROM (SELECT 1) AS _pm_one LEFT JOIN query_table(pairs) AS o ON true LIMIT 1))
    ),
    _pm_sp_flat AS (
        SELECT unnest(r, recursive := true) FROM _pm_sp_scored
    )
    SELECT src AS source_table, p.source_id, tgt AS target_table, p.target_id,
           f.rank, f.score, f.text_score, f.image_score, f.lexical_score, f.identifier_match,
           f.price_ratio, f.decision,
           (f.rank = 1 AND f.score = max(f.score) OVER (PARTITION BY CAST(p.target_id AS VARCHAR))) AS mutual_best,
           f.human_verdict, f.scored_by, f.note
    FROM _pm_sp_pairs AS p JOIN _pm_sp_flat AS f ON f.pair_no = p.pair_no
    ORDER BY p.pair_no;
