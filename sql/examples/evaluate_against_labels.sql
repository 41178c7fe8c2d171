-- How good are the matches? Precision, recall and F1 of each decision band, and recall@k, against
-- labelled pairs. Needs: supplier_feed, catalog and labels (left_id: a supplier_feed id, right_id: the
-- catalog id it matches). Run: pmatch sql shop.duckdb -f sql/examples/evaluate_against_labels.sql
-- (pmatch evaluate writes the same and more, with plots and a report page.)

CREATE OR REPLACE TABLE eval_matches AS
SELECT * FROM match_products('supplier_feed', 'catalog', k := 10);

CREATE OR REPLACE TEMP TABLE eval_pairs AS
WITH truth AS (
    SELECT DISTINCT CAST(left_id AS VARCHAR) AS s, CAST(right_id AS VARCHAR) AS t FROM labels
)
SELECT m.decision, m.rank, (tr.s IS NOT NULL) AS correct
FROM eval_matches AS m
LEFT JOIN truth AS tr ON tr.s = CAST(m.source_id AS VARCHAR) AND tr.t = CAST(m.target_id AS VARCHAR);

-- precision / recall / F1 when the pairs of a band are taken as matches
WITH n AS (SELECT count(DISTINCT (left_id, right_id)) AS matches FROM labels),
bands AS (
    SELECT 'accept' AS taken_as_match, count(*) FILTER (WHERE decision = 'accept') AS predicted,
           count(*) FILTER (WHERE decision = 'accept' AND correct) AS correct FROM eval_pairs
    UNION ALL
    SELECT 'accept + review', count(*) FILTER (WHERE decision <> 'reject'),
           count(*) FILTER (WHERE decision <> 'reject' AND correct) FROM eval_pairs
    UNION ALL
    SELECT 'best candidate (rank 1)', count(*) FILTER (WHERE rank = 1),
           count(*) FILTER (WHERE rank = 1 AND correct) FROM eval_pairs
)
SELECT taken_as_match, predicted, correct, n.matches AS labelled_matches,
       round(correct / nullif(predicted, 0), 3) AS precision,
       round(correct / nullif(n.matches, 0), 3) AS recall,
       round(2 * correct / nullif(predicted + n.matches, 0), 3) AS f1
FROM bands, n
ORDER BY taken_as_match;

-- recall@k: share of the labelled matches found among each offer's k best candidates
SELECT round(count(*) FILTER (WHERE correct AND rank <= 1) / m, 3) AS "recall@1",
       round(count(*) FILTER (WHERE correct AND rank <= 5) / m, 3) AS "recall@5",
       round(count(*) FILTER (WHERE correct AND rank <= 10) / m, 3) AS "recall@10"
FROM eval_pairs, (SELECT count(DISTINCT (left_id, right_id)) AS m FROM labels)
GROUP BY m;
