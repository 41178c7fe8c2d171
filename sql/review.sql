-- pmatch-duckdb: human review as SQL. Verdicts live in the plain table pm_labels (history; the latest
-- verdict per pair wins; view pm_labels_current) and the queue in pm_review_queue: both are ordinary
-- tables of your database, readable by plain SQL and dbt without pmatch installed.

-- pm_queue_review(matches [, queue := 'default', accept_sample := 0.05, recheck_delta := 0.3, seed := 0,
--                  certify := NULL, certify_above := NULL, certify_size := NULL, audit_rejects := 0,
--                  one_match := false]):
-- queue the pairs of a saved match_products result for review (replaces the queue of that name).
-- Order: pairs nearest the decision boundary first, spread across source offers; a random
-- `accept_sample` share of the auto-accepted pairs interleaved (to measure auto-accept precision);
-- pairs already labelled are skipped unless the model turned against the verdict (then first): its score
-- moved by >= recheck_delta away from it, or, across score scales (pm_labels.scored_by), its decision now
-- contradicts the verdict where the decision shown did not.
-- certify := 0.99: first (after rechecks) a uniform random sample of the pairs scoring >= certify_above, sized
-- (certify_size; default: enough for the 95% lower bound to reach the target with one no-match among them, 446
-- at 0.99) so that reviewing it lets pmatch calibrate certify that precision. certify_above by default: a trained
-- matcher's lowest score above which its calibrated scores average 1 - (1 - certify) / 5; zero-shot: the accept
-- threshold in force (or give it).
-- audit_rejects := 200: also that many auto-rejected pairs, a random sample stratified where missed matches are
-- (rejected rank-1 candidates, ranks 2-3, the rest by score), spread through the queue: pmatch calibrate estimates
-- from their verdicts how many matches the model already auto-rejects, and keeps max_recall_loss of all matches.
-- one_match := true: the result links each source offer to at most one target product (a supplier feed against a
-- catalog; not a one-table dedup result), so a match given on the review page, answered or picked among the
-- offer's other candidates, records no_match for the offer's other unanswered boundary pairs and the other
-- candidates the page listed (samples and rechecks stay for a person; one undo takes the whole answer back). Such a
-- queue also holds one page per offer the result auto-accepts for two or more products (or for one, where a person
-- said match for another): accept_conflicts, reason accept_conflict (at least one of those links is wrong). In a
-- one-table (dedup) result such pages come without asking: the weakest auto-accepted link on the path between two
-- offers of one cluster that the result rejects as a pair, or a person said differ.
-- It is a statement about the data, so it is checked: one_match_conflicts counts the source offers people already
-- said match for two or more target products (pm_labels); where it is not 0, an offer can be several products and
-- one_match would answer true matches no_match. (Two auto-accepts on one offer are the model's guesses, not a
-- conflict: the review settles them.)
-- Returns one row: queue, queued, boundary, accept_samples, rechecks, skipped_labelled, certify_samples,
-- certify_above, reject_samples, accept_conflicts, one_match_conflicts (NULL without one_match).
CREATE OR REPLACE TEMP MACRO pm_queue_review(matches, queue := 'default', accept_sample := 0.05,
                                             recheck_delta := 0.3, seed := 0, certify := NULL,
                                             certify_above := NULL, certify_size := NULL,
                                             audit_rejects := 0, one_match := false) AS TABLE
    SELECT r.* FROM (SELECT CASE
        WHEN typeof(matches) <> 'VARCHAR'
            THEN error('pm_queue_review expects the matches table name as VARCHAR, got ' || typeof(matches))
        WHEN typeof(queue) <> 'VARCHAR' THEN error('pm_queue_review: queue must be VARCHAR, got ' || typeof(queue))
        WHEN TRY_CAST(accept_sample AS DOUBLE) IS NULL OR TRY_CAST(recheck_delta AS DOUBLE) IS NULL
            OR TRY_CAST(seed AS BIGINT) IS NULL
            THEN error('pm_queue_review: accept_sample and recheck_delta must be numbers and seed an integer')
        WHEN (certify IS NOT NULL AND TRY_CAST(certify AS DOUBLE) IS NULL)
            OR (certify_above IS NOT NULL AND TRY_CAST(certify_above AS DOUBLE) IS NULL)
            OR (certify_size IS NOT NULL AND (TRY_CAST(certify_size AS BIGINT) IS NULL
                OR TRY_CAST(certify_size AS DOUBLE) <> TRY_CAST(certify_size AS BIGINT)))
            THEN error('pm_queue_review: certify and certify_above must be numbers and certify_size an integer')
        WHEN audit_rejects IS NOT NULL AND (TRY_CAST(audit_rejects AS BIGINT) IS NULL
            OR TRY_CAST(audit_rejects AS DOUBLE) <> TRY_CAST(audit_rejects AS BIGINT))
            THEN error('pm_queue_review: audit_rejects must be a whole number, got ' || audit_rejects::VARCHAR)
        WHEN one_match IS NULL OR typeof(one_match) <> 'BOOLEAN'
            THEN error('pm_queue_review: one_match must be true or false, got ' || coalesce(one_match::VARCHAR, 'NULL'))
        ELSE _pm_queue_review(matches::VARCHAR, queue::VARCHAR, TRY_CAST(accept_sample AS DOUBLE),
                              TRY_CAST(recheck_delta AS DOUBLE), TRY_CAST(seed AS BIGINT),
                              TRY_CAST(certify AS DOUBLE), TRY_CAST(certify_above AS DOUBLE),
                              TRY_CAST(certify_size AS BIGINT), coalesce(TRY_CAST(audit_rejects AS BIGINT), 0),
                              TRY_CAST(one_match AS BOOLEAN)) END AS r);
