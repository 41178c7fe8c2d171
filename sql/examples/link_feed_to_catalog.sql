-- Link a supplier feed to the catalog: each feed offer's best catalog match and what to do with it.
-- Needs: offer tables supplier_feed and catalog (id, title [, brand, images, price, gtin, mpn, ...];
-- other column names: map them with a view). Run: pmatch sql shop.duckdb -f sql/examples/link_feed_to_catalog.sql

-- refresh the catalog index (only new or changed offers are embedded)
SELECT index, inserted, updated, deleted, unchanged, total FROM pm_index('catalog');

-- the candidates, saved: matching runs once, the queries below read the table
CREATE OR REPLACE TABLE feed_links AS
SELECT * FROM match_products('supplier_feed', 'catalog', k := 5);

-- one row per feed offer: its best candidate (accept: link it; review: a person decides; none: a new product)
SELECT f.id AS feed_id, f.title AS feed_title, l.target_id AS catalog_id, c.title AS catalog_title,
       round(l.score, 3) AS score, coalesce(l.decision, 'no candidate') AS decision, l.mutual_best
FROM supplier_feed AS f
LEFT JOIN feed_links AS l ON l.source_id = f.id AND l.rank = 1
LEFT JOIN catalog AS c ON c.id = l.target_id
ORDER BY decision, score DESC, feed_id;

-- how many feed offers each decision covers
SELECT coalesce(l.decision, 'no candidate') AS decision, count(*) AS feed_offers
FROM supplier_feed AS f
LEFT JOIN feed_links AS l ON l.source_id = f.id AND l.rank = 1
GROUP BY ALL ORDER BY decision;
