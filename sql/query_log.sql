-- The query log's upkeep and the lookups of feedback and analytics (see migration 0010 for
-- the tables, sql/analytics.sql for the views).

-- name: salt
-- The key of the principals' hash.
SELECT salt FROM query_log_salt;

-- name: add_partitions
-- The UTC days from :first to :last get their partitions; how many were missing.
SELECT query_log_add_partitions(:first, :last);

-- name: drop_partitions
-- The days before :cutoff are dropped whole (and the feedback given before it).
SELECT query_log_drop_before(:cutoff);

-- name: find_search
-- A logged search or answer by id, for feedback on it.
SELECT id, logged_at, kind, collection, key_id, coalesce(page_offset, 0) AS page_offset,
       chunk_ids, document_ids, status, subject_hash
FROM query_log
WHERE id = :id;

-- name: record_feedback
INSERT INTO feedback (search_id, searched_at, collection, kind, chunk_id, document_id, position,
                      comment, key_id)
VALUES (:search_id, :searched_at, :collection, :kind, :chunk_id, :document_id, :position,
        :comment, :key_id)
RETURNING id, created_at;

-- name: report
-- Searches per day over every mode: volume, errors, zero-result rate, latency, cache hits; of
-- one collection, or (:collection NULL) of all.
SELECT day, requests, errors, zero_results, zero_rate, p50_ms, p95_ms, p99_ms, cache_hit_ratio
FROM analytics.searches_daily
WHERE kind = 'search' AND mode IS NULL AND collection IS NOT DISTINCT FROM :collection
  AND day >= :since
ORDER BY day;

-- name: latency
-- Latency per day and mode (of one collection, or all).
SELECT day, mode, requests, p50_ms, p95_ms, p99_ms
FROM analytics.searches_daily
WHERE kind = 'search' AND mode IS NOT NULL AND collection IS NOT DISTINCT FROM :collection
  AND day >= :since
ORDER BY day, mode;

-- name: top_queries
-- The queries asked most since :since (of one collection, or all).
SELECT query, sum(requests) AS requests, sum(zero_results) AS zero_results,
       round(sum(mean_hits * requests) / sum(requests), 2) AS mean_hits, max(last_seen) AS last_seen
FROM analytics.queries_daily
WHERE kind = 'search' AND day >= :since AND (CAST(:collection AS text) IS NULL OR collection = :collection)
GROUP BY query
ORDER BY requests DESC, query
LIMIT :limit;

-- name: zero_queries
-- The queries that found nothing, most frequent first.
SELECT query, sum(zero_results) AS zero_results, sum(requests) AS requests, max(last_seen) AS last_seen
FROM analytics.queries_daily
WHERE kind = 'search' AND day >= :since AND (CAST(:collection AS text) IS NULL OR collection = :collection)
GROUP BY query
HAVING sum(zero_results) > 0
ORDER BY zero_results DESC, query
LIMIT :limit;

-- name: feedback_daily
-- Clicks and answer ratings per day (of one collection, or all).
SELECT c.day, c.searches, c.clicked, c.ctr, c.mrr_clicked, a.answers, a.extractive_rate,
       a.fallback_rate, a.thumbs_up, a.thumbs_down, a.feedback_score
FROM analytics.clicks_daily c
FULL JOIN analytics.answers_daily a ON a.day = c.day
                                   AND a.collection IS NOT DISTINCT FROM c.collection
WHERE coalesce(c.day, a.day) >= :since
  AND coalesce(c.collection, a.collection) IS NOT DISTINCT FROM :collection
ORDER BY coalesce(c.day, a.day);

-- name: window
-- One figure per quality check over the whole window (never an average of daily figures).
SELECT count(*) FILTER (WHERE s.kind = 'search' AND s.status < 400) AS searches,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY s.total_ms)
         FILTER (WHERE s.kind = 'search' AND s.status < 400) AS p95_ms,
       CAST(count(*) FILTER (WHERE s.kind = 'search' AND s.status < 400 AND s.hits = 0) AS float8)
         / greatest(count(*) FILTER (WHERE s.kind = 'search' AND s.status < 400), 1) AS zero_rate,
       CAST(count(*) FILTER (WHERE s.kind = 'search' AND s.status < 400 AND EXISTS (
                SELECT FROM analytics.feedback f
                WHERE f.search_id = s.search_id AND f.kind = 'click')) AS float8)
         / greatest(count(*) FILTER (WHERE s.kind = 'search' AND s.status < 400), 1) AS ctr
FROM analytics.searches s
WHERE s.day >= :since AND (CAST(:collection AS text) IS NULL OR s.collection = :collection);

-- name: judged_queries
-- What export-qrels writes: per query text (trimmed, lower case) and document, the best
-- judgement given on a search of :collection since :since: helpful 2, click 1, not helpful 0.
SELECT lower(btrim(f.query)) AS query,
       coalesce(f.document_id, s.document_ids[array_position(s.chunk_ids, f.chunk_id)])
         AS document_id,
       max(CASE f.kind WHEN 'helpful' THEN 2 WHEN 'click' THEN 1 ELSE 0 END) AS score
FROM analytics.feedback f
JOIN analytics.searches s ON s.search_id = f.search_id
WHERE f.collection = :collection
  AND f.created_at >= CAST(CAST(:since AS date) AS timestamp) AT TIME ZONE 'UTC'
  AND f.kind IN ('click', 'helpful', 'not_helpful')
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: collection_corpus
-- The live documents of :collection as a corpus: id, title and text (its sections in order).
SELECT d.external_id, d.title, string_agg(s.text, E'\n\n' ORDER BY s.ordinal) AS text
FROM collections c
JOIN documents d ON d.collection_id = c.id AND d.deleted_at IS NULL
JOIN sections s ON s.collection_id = d.collection_id AND s.document_id = d.id
WHERE c.name = :collection
GROUP BY d.id, d.external_id, d.title
ORDER BY d.external_id;
