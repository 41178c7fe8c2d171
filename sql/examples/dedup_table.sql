-- Deduplicate one table: pairs of offers that are the same product, an entity id per offer, and the
-- table with one offer per product. Needs: an offer table catalog.
-- Run: pmatch sql shop.duckdb -f sql/examples/dedup_table.sql

-- dedup mode (source = target): no self-pairs, each unordered pair once
CREATE OR REPLACE TABLE catalog_pairs AS
SELECT * FROM match_products('catalog', 'catalog', k := 5);

-- the likely duplicates, best first
SELECT p.source_id, a.title AS title, p.target_id, b.title AS duplicate_title, round(p.score, 3) AS score, p.decision
FROM catalog_pairs AS p
JOIN catalog AS a ON a.id = p.source_id
JOIN catalog AS b ON b.id = p.target_id
WHERE p.decision <> 'reject'
ORDER BY p.score DESC;

-- entities: connected components over the accepted pairs; ids stay stable across runs
CREATE OR REPLACE TABLE catalog_entities AS
SELECT * FROM product_clusters('catalog_pairs');

-- the groups of duplicates
SELECT entity_id, list(offer_id ORDER BY offer_id) AS offers, count(*) AS n
FROM catalog_entities
GROUP BY entity_id HAVING count(*) > 1
ORDER BY n DESC, offers;

-- the deduplicated table: one offer per entity (the smallest id), and every offer without duplicates
CREATE OR REPLACE VIEW catalog_dedup AS
SELECT c.*
FROM catalog AS c
LEFT JOIN catalog_entities AS e ON e.offer_id = CAST(c.id AS VARCHAR)
QUALIFY row_number() OVER (PARTITION BY coalesce(CAST(e.entity_id AS VARCHAR), 'offer ' || CAST(c.id AS VARCHAR))
                           ORDER BY c.id) = 1;

SELECT (SELECT count(*) FROM catalog) AS offers, (SELECT count(*) FROM catalog_dedup) AS after_dedup;
