-- The analytics views: what the query log and the feedback say about how search is used and
-- how well it works, for psql, Metabase or Grafana. They live in the schema `analytics`, the
-- only one the role `hybrid_analyst` may read (the views read the base tables with their
-- owner's rights). Days are UTC. Created by migration 0010 (every statement is a `CREATE OR
-- REPLACE`; a later migration that changes a view runs this file again).
--
-- In the `_daily` views a NULL `collection` (or `mode`) is the total over every collection
-- (mode): percentiles do not add up, so each total is its own row. A request that failed
-- before its mode was known has the mode ''.

-- name: searches
-- One row per logged search or answer: what was asked, what came back, how long each stage
-- took. Not the principals (only their keyed hash) and not the key's id.
CREATE OR REPLACE VIEW analytics.searches AS
SELECT q.id AS search_id, q.logged_at, CAST(q.logged_at AT TIME ZONE 'UTC' AS date) AS day,
       q.kind, q.collection, coalesce(q.mode, '') AS mode, q.k, q.page_offset, q.filter, q.boosts, q.query, q.hits,
       q.chunk_ids, q.document_ids, q.status, q.error, q.cache, q.vector_backend,
       q.embed_ms, q.sql_ms, q.faiss_ms, q.rerank_ms, q.generation_ms, q.total_ms,
       q.key_prefix, q.principals_hash, q.model, q.fallback, q.extractive, q.prompt_tokens,
       q.completion_tokens, q.cited_chunk_ids
FROM public.query_log q;

-- name: searches_daily
-- Per day, collection, kind and mode: volume, errors, zero-result rate, latency percentiles
-- (of answered requests, in ms) and the share served from the result cache.
CREATE OR REPLACE VIEW analytics.searches_daily AS
SELECT day, collection, kind, mode,
       count(*) AS requests,
       count(*) FILTER (WHERE status >= 400) AS errors,
       count(*) FILTER (WHERE status < 400 AND hits = 0) AS zero_results,
       round(CAST(count(*) FILTER (WHERE status < 400 AND hits = 0) AS numeric)
             / greatest(count(*) FILTER (WHERE status < 400), 1), 4) AS zero_rate,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY total_ms) FILTER (WHERE status < 400)
         AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY total_ms) FILTER (WHERE status < 400)
         AS p95_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY total_ms) FILTER (WHERE status < 400)
         AS p99_ms,
       round(CAST(count(*) FILTER (WHERE cache IN ('cached', 'shared')) AS numeric)
             / greatest(count(*) FILTER (WHERE status < 400), 1), 4) AS cache_hit_ratio
FROM analytics.searches
GROUP BY GROUPING SETS ((day, collection, kind, mode), (day, collection, kind), (day, kind, mode),
                        (day, kind));

-- name: queries_daily
-- Per day, collection and query text (trimmed, lower case): how often it was asked, how often
-- it found nothing, and its latency. Top queries and zero-result queries read this view.
CREATE OR REPLACE VIEW analytics.queries_daily AS
SELECT day, collection, kind, lower(btrim(query)) AS query,
       count(*) AS requests,
       count(*) FILTER (WHERE status < 400 AND hits = 0) AS zero_results,
       round(avg(hits), 2) AS mean_hits,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY total_ms) AS p95_ms,
       max(logged_at) AS last_seen
FROM analytics.searches
GROUP BY day, collection, kind, lower(btrim(query));

-- name: feedback
-- Every click and rating, with the query it was given for and the rank of the hit it names
-- (its position in the answer, or where the search returned it).
CREATE OR REPLACE VIEW analytics.feedback AS
SELECT f.created_at, CAST(f.created_at AT TIME ZONE 'UTC' AS date) AS day, f.collection,
       f.search_id, q.kind AS search_kind, f.kind, f.chunk_id, f.document_id,
       coalesce(f.position,
                q.page_offset + coalesce(array_position(q.chunk_ids, f.chunk_id),
                                         array_position(q.document_ids, f.document_id)))
         AS rank,
       f.comment, q.query
FROM public.feedback f
JOIN public.query_log q ON q.id = f.search_id AND q.logged_at = f.searched_at;

-- name: clicks_daily
-- Per day and collection: searches, searches with at least one click, click-through rate, and
-- the mean reciprocal rank of the best clicked hit of the clicked searches.
CREATE OR REPLACE VIEW analytics.clicks_daily AS
WITH clicked AS (
    SELECT search_id, min(rank) AS best
    FROM analytics.feedback
    WHERE kind = 'click'
    GROUP BY search_id
)
SELECT s.day, s.collection,
       count(*) AS searches,
       count(c.search_id) AS clicked,
       round(CAST(count(c.search_id) AS numeric) / count(*), 4) AS ctr,
       round(CAST(avg(1.0 / c.best) FILTER (WHERE c.best > 0) AS numeric), 4) AS mrr_clicked
FROM analytics.searches s
LEFT JOIN clicked c ON c.search_id = s.search_id
WHERE s.kind = 'search' AND s.status < 400
GROUP BY GROUPING SETS ((s.day, s.collection), (s.day));

-- name: answers_daily
-- Per day and collection: answers, how many were extractive (no model) and how many fell back
-- from a failing model, and the thumbs given (score: up minus down over all thumbs). An answer
-- counts one thumb, its last: a second click, or a change of mind, does not count twice.
CREATE OR REPLACE VIEW analytics.answers_daily AS
WITH thumbs AS (
    SELECT DISTINCT ON (search_id) search_id,
           CAST(CAST(kind = 'thumbs_up' AS integer) AS bigint) AS up,
           CAST(CAST(kind = 'thumbs_down' AS integer) AS bigint) AS down
    FROM public.feedback
    WHERE kind IN ('thumbs_up', 'thumbs_down')
    ORDER BY search_id, created_at DESC, id DESC
)
SELECT s.day, s.collection,
       count(*) AS answers,
       count(*) FILTER (WHERE s.extractive) AS extractive,
       count(*) FILTER (WHERE s.fallback) AS fallbacks,
       round(CAST(count(*) FILTER (WHERE s.extractive) AS numeric) / count(*), 4)
         AS extractive_rate,
       round(CAST(count(*) FILTER (WHERE s.fallback) AS numeric) / count(*), 4) AS fallback_rate,
       coalesce(sum(t.up), 0) AS thumbs_up,
       coalesce(sum(t.down), 0) AS thumbs_down,
       round(CAST(sum(t.up) - sum(t.down) AS numeric) / nullif(sum(t.up) + sum(t.down), 0), 4)
         AS feedback_score
FROM analytics.searches s
LEFT JOIN thumbs t ON t.search_id = s.search_id
WHERE s.kind = 'answer' AND s.status < 400
GROUP BY GROUPING SETS ((s.day, s.collection), (s.day));

-- name: keys_daily
-- Per day and key (its public prefix; empty for requests without a key): searches, answers,
-- errors and p95 latency.
CREATE OR REPLACE VIEW analytics.keys_daily AS
SELECT day, coalesce(key_prefix, '') AS key_prefix,
       count(*) FILTER (WHERE kind = 'search') AS searches,
       count(*) FILTER (WHERE kind = 'answer') AS answers,
       count(*) FILTER (WHERE status >= 400) AS errors,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY total_ms) AS p95_ms
FROM analytics.searches
GROUP BY day, coalesce(key_prefix, '');
