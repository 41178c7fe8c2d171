-- Human review: queue the uncertain pairs of a match result, look at them beside each other, record a
-- verdict in pm_labels (usually given on the review page), and see the verdicts in force.
-- Needs: supplier_feed and catalog. Run: pmatch sql shop.duckdb -f sql/examples/review_queue.sql

CREATE OR REPLACE TABLE feed_matches AS
SELECT * FROM match_products('supplier_feed', 'catalog', k := 3);

-- queue the pairs nearest the decision boundary first (plus a sample of auto-accepted ones)
SELECT * FROM pm_queue_review('feed_matches', queue := 'feed');

-- another queue that starts with a certification sample: random pairs above the accept threshold, enough of them
-- (certify_samples) for `pmatch calibrate` to certify precision >= 0.95 once they are reviewed
SELECT queue, queued, certify_samples, certify_above
FROM pm_queue_review('feed_matches', queue := 'feed_certify', certify := 0.95);

-- a queue that also checks 20 auto-rejected pairs (a random sample, stratified where missed matches are), so that
-- `pmatch calibrate` can estimate how many matches the review threshold already auto-rejects
SELECT queue, queued, reject_samples
FROM pm_queue_review('feed_matches', queue := 'feed_audit', audit_rejects := 20);

-- the same queue for a feed where each offer is at most one catalog product: a match given on the review page
-- (pmatch review shop.duckdb --queue feed_one) also answers the offer's other candidates no match;
-- one_match_conflicts: offers already labelled a match with two or more catalog products (then it does not hold)
SELECT queue, queued, one_match_conflicts FROM pm_queue_review('feed_matches', queue := 'feed_one', one_match := true);

-- the queue with both offers side by side
SELECT q.position, q.reason, q.decision, round(q.score, 3) AS score, s.title AS feed_title, c.title AS catalog_title
FROM pm_review_queue AS q
JOIN supplier_feed AS s ON CAST(s.id AS VARCHAR) = q.source_id
JOIN catalog AS c ON CAST(c.id AS VARCHAR) = q.target_id
WHERE q.queue = 'feed'
ORDER BY q.position
LIMIT 20;

-- a verdict is a row in pm_labels (history: the latest verdict per pair wins)
INSERT INTO pm_labels (source_table, source_id, target_table, target_id, verdict, reviewer, queue, reason,
                       score, decision)
SELECT source_table, source_id, target_table, target_id, 'match', 'analyst', queue, reason, score, decision
FROM pm_review_queue
WHERE queue = 'feed' AND position = 1;

SELECT verdict, count(*) AS pairs FROM pm_labels_current GROUP BY verdict ORDER BY verdict;
