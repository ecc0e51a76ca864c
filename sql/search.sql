-- The read path's one statement: keyword leg (BM25) + vector leg (HNSW or exact) + weighted
-- reciprocal rank fusion + bounded boosts, with the ACL and the filters inside each leg.
--
-- Its parts, in order:
--   query_lexemes .. keyword_query        the query's lexemes, their BM25 weights, candidates
--   visible_limits .. visible_documents   how many chunks the search may see: few, small, many
--   keyword_budget_candidates .. _ranked  the keyword leg: candidates, exact BM25, visible, top
--   vector_cached .. vector_ranked        the vector leg: cache candidates, exact scan or HNSW
--   fused, boosted, page                  weighted RRF, recency and popularity boosts, the page
--
-- Which documents a search may see is written once, in `visible` below; the statement says
-- `/* visible */ TRUE` where it scans documents `d`, and `/* visible document */ (x)` where it
-- checks the one document whose id is `x` (app/search/engine.py puts them together). The
-- filter goes where `/* filter */ TRUE` stands: in a scan the compiled predicate over `d`, in a
-- check the same condition without what only helps an index find documents (see
-- app/search/filters.py: whitelisted columns, values as bind parameters). A leg whose depth is
-- 0 is switched off by a constant condition, so the planner never runs it. Where it says
-- `/* embedding */ c.embedding`, the collection's vectors go: its vector column cast to its
-- dimension, the expression its HNSW index is on (alembic revision 0013).

-- name: query_terms
-- The query's lexemes and how often it repeats each (BM25's query term frequency): from the
-- query text, or, after pseudo-relevance feedback, the expanded query's lexemes with their
-- weights (`:query_lexemes`, `:query_qtf`). Written where `/* query terms */` stands.
(SELECT v.lexeme, CAST(coalesce(array_length(v.positions, 1), 1) AS float8) AS qtf
 FROM unnest(to_tsvector(CAST(:text_config AS regconfig), :query_text)) AS v
 WHERE CAST(:query_lexemes AS text[]) IS NULL
 UNION ALL
 SELECT e.lexeme, e.qtf
 FROM unnest(CAST(:query_lexemes AS text[]), CAST(:query_qtf AS float8[])) AS e(lexeme, qtf))

-- name: visible
-- A document `d` the search may see: live, shared with one of the caller's principals, and
-- matching the filter.
d.deleted_at IS NULL
AND d.acl && CAST(:principals AS text[])
AND /* filter */ TRUE

-- name: visible_document
-- Whether the document whose id stands in `/* document */` is one the search may see: a
-- lookup by primary key, never a scan of the collection's documents.
coalesce((SELECT true
          FROM documents d
          WHERE d.collection_id = :collection_id AND d.id = /* document */ NULL
            AND /* visible */ TRUE), false)

-- name: visible_ids
-- The documents a restricted search may see (those with chunks), when there are at most
-- :max_documents of them (one more id says there are more): the keyword index then scores
-- those documents' chunks alone. Run after `prepare`, in the search's transaction.
SELECT coalesce(array_agg(v.id), '{}') AS ids
FROM (SELECT d.id
      FROM documents d
      WHERE d.collection_id = :collection_id
        AND d.chunk_count > 0
        AND /* visible */ TRUE
      LIMIT :max_documents + 1) AS v;

-- name: prf
-- Pseudo-relevance feedback from a first pass's best chunks (`:chunk_ids`, read in the
-- search's transaction, so only chunks the caller could see): the keyword query expanded
-- RM3-style and the mean of their vectors (Rocchio, applied by the caller).
-- Each chunk's language model is its term frequencies over its length; their mean over the
-- chunks is the relevance model. Its `:terms` most probable lexemes that are not in more than
-- `:max_share` of the collection's chunks (near stop words carry no topic) join the query's
-- own lexemes: the query's weights (its term frequencies, summing to `q`) are scaled by
-- 1 - `:expansion`, and the chosen lexemes share `:expansion` × q in proportion to their
-- probability. A lexeme in both adds its two weights. So `:expansion` 0 is the query as typed.
WITH top AS MATERIALIZED (
    SELECT c.tsv, greatest(c.length, 1) AS length, /* embedding */ c.embedding AS embedding
    FROM unnest(CAST(:chunk_ids AS bigint[])) AS f(id)
    JOIN chunks c ON c.collection_id = :collection_id AND c.id = f.id
),
typed AS (
    SELECT v.lexeme, CAST(coalesce(array_length(v.positions, 1), 1) AS float8) AS qtf
    FROM unnest(to_tsvector(CAST(:text_config AS regconfig), :query_text)) AS v
),
relevance AS (
    SELECT u.lexeme,
           sum(CAST(coalesce(array_length(u.positions, 1), 1) AS float8) / t.length)
             / (SELECT count(*) FROM top) AS p
    FROM top t
    CROSS JOIN LATERAL unnest(t.tsv) AS u
    GROUP BY u.lexeme
),
chosen AS (
    SELECT r.lexeme, r.p
    FROM relevance r
    JOIN term_stats s ON s.collection_id = :collection_id AND s.lexeme = r.lexeme
    WHERE s.chunks > 0
      AND s.chunks <= CAST(:max_share AS float8)
                      * coalesce((SELECT chunks FROM corpus_stats
                                  WHERE collection_id = :collection_id), 0)
    ORDER BY r.p DESC, r.lexeme
    LIMIT :terms
),
weighted AS (
    SELECT lexeme, (1 - CAST(:expansion AS float8)) * qtf AS qtf FROM typed
    UNION ALL
    SELECT c.lexeme,
           CAST(:expansion AS float8) * (SELECT coalesce(sum(qtf), 0) FROM typed)
             * c.p / (SELECT sum(p) FROM chosen) AS qtf
    FROM chosen c
),
expanded AS (
    SELECT lexeme, sum(qtf) AS qtf
    FROM weighted
    GROUP BY lexeme
    HAVING sum(qtf) > 0
    ORDER BY lexeme
)
SELECT (SELECT coalesce(array_agg(lexeme ORDER BY lexeme), '{}') FROM expanded) AS lexemes,
       (SELECT coalesce(array_agg(qtf ORDER BY lexeme), '{}') FROM expanded) AS qtf,
       (SELECT CAST(avg(embedding) AS real[]) FROM top) AS centroid;

-- name: prepare
-- Run first in the search's own transaction: the reader role (row-level security applies),
-- the principals it may see, and the HNSW search parameters. In a collection of fewer than
-- `generic_plan_below` chunks, the statement runs on a plan made once per connection for any
-- values: there planning costs a quarter of a search, and no choice in the plan depends on the
-- values (switched-off legs are skipped at run time, the collection's id is a constant in the
-- statement). Larger collections are planned for each search's values, where the sizes the
-- planner sees decide more. No parallel workers: starting them costs more than any one
-- search's scan.
-- With the keyword index, it also reads what the index scores with, as the statement reads
-- it: the query's lexemes (rarest first, bounded), each one's BM25 weight (Lucene's idf times
-- the query term frequency) and the collection's average chunk length.
WITH kept AS (
    SELECT t.lexeme, t.chunks AS df, q.qtf
    FROM /* query terms */ (SELECT CAST(NULL AS text) AS lexeme, CAST(NULL AS float8) AS qtf) AS q
    JOIN term_stats t ON t.collection_id = :collection_id AND t.lexeme = q.lexeme
    WHERE t.chunks > 0 AND CAST(:keyword_position AS text) IS NOT NULL
    ORDER BY t.chunks, t.lexeme
    LIMIT :max_terms
),
corpus AS (
    SELECT CAST(chunks AS float8) AS n, CAST(total_length AS float8) / greatest(chunks, 1) AS avgdl
    FROM corpus_stats
    WHERE collection_id = :collection_id
),
terms AS (
    SELECT coalesce(array_agg(k.lexeme), '{}') AS lexemes,
           coalesce(array_agg(k.qtf * ln(1 + (c.n - k.df + 0.5) / (k.df + 0.5))), '{}')
             AS weights
    FROM kept k, corpus c
)
SELECT set_config('role', 'hybrid_reader', true),
       set_config('plan_cache_mode',
                  CASE WHEN coalesce((SELECT s.chunks FROM corpus_stats s
                                      WHERE s.collection_id = :collection_id), 0)
                            < :generic_plan_below
                       THEN 'force_generic_plan'
                       ELSE 'force_custom_plan'
                  END, true),
       set_config('max_parallel_workers_per_gather', '0', true),
       set_config('hybrid.principals', CAST(CAST(:principals AS text[]) AS text), true),
       set_config('hnsw.ef_search', :ef_search, true),
       set_config('hnsw.iterative_scan', 'relaxed_order', true),
       set_config('hnsw.max_scan_tuples', :max_scan_tuples, true),
       -- With vector candidates from the in-process cache: whether it has applied every
       -- vector change this transaction can see (its position is a snapshot; see sql/ann.sql).
       CASE WHEN CAST(:cache_position AS text) IS NOT NULL
            THEN NOT EXISTS (
                SELECT FROM change_log l
                WHERE l.collection_id = :collection_id AND l.op <> 'U'
                  AND l.xid >= pg_snapshot_xmin(CAST(:cache_position AS pg_snapshot))
                  AND NOT pg_visible_in_snapshot(l.xid, CAST(:cache_position AS pg_snapshot)))
       END AS cache_fresh,
       -- The same for the in-process keyword index (app/lexical) at `keyword_position`.
       CASE WHEN CAST(:keyword_position AS text) IS NOT NULL
            THEN NOT EXISTS (
                SELECT FROM change_log l
                WHERE l.collection_id = :collection_id AND l.op <> 'U'
                  AND l.xid >= pg_snapshot_xmin(CAST(:keyword_position AS pg_snapshot))
                  AND NOT pg_visible_in_snapshot(l.xid, CAST(:keyword_position AS pg_snapshot)))
       END AS keyword_fresh,
       (SELECT lexemes FROM terms) AS keyword_lexemes,
       (SELECT weights FROM terms) AS keyword_weights,
       (SELECT avgdl FROM corpus) AS avgdl;

-- name: search
WITH
-- The query's lexemes that occur in the collection, with how often the query repeats each
-- (BM25's query term frequency), rarest first and bounded, so that a query of thousands of
-- words is still one small OR query. Each is quoted as a tsquery literal, so that no input can
-- be an operator.
query_lexemes AS MATERIALIZED (
    SELECT lexeme, df, qtf, quoted,
           row_number() OVER (ORDER BY df, lexeme) AS n,
           sum(df) OVER (ORDER BY df, lexeme) AS running_df
    FROM (SELECT t.lexeme, t.chunks AS df, q.qtf,
                 '''' || replace(replace(t.lexeme, '\', '\\'), '''', '''''') || '''' AS quoted
          FROM /* query terms */ (SELECT CAST(NULL AS text) AS lexeme, CAST(NULL AS float8) AS qtf) AS q
          JOIN term_stats t ON t.collection_id = :collection_id AND t.lexeme = q.lexeme
          WHERE t.chunks > 0 AND :keyword_depth > 0
          ORDER BY t.chunks, t.lexeme
          LIMIT :max_terms) AS kept
),
corpus AS MATERIALIZED (
    SELECT CAST(chunks AS float8) AS n, CAST(total_length AS float8) / greatest(chunks, 1) AS avgdl
    FROM corpus_stats
    WHERE collection_id = :collection_id
),
-- Lucene's BM25 idf (never negative), times the query term frequency; and the lexeme as a
-- tsquery that matches only weight A (title and headings), written ':' || 'A' so that it is
-- not read as a bind parameter.
query_weights AS MATERIALIZED (
    SELECT q.lexeme, q.qtf * ln(1 + (c.n - q.df + 0.5) / (q.df + 0.5)) AS weight,
           CAST(q.quoted || ':' || 'A' AS tsquery) AS in_title
    FROM query_lexemes q, corpus c
),
-- How rare the query's lexemes are in the collection: their mean idf over ln(chunks), from 0
-- (every lexeme in every chunk) to 1 (each in one chunk); 0.6 without lexemes. A query of rare
-- words is one the keyword leg answers well (measured on the evaluation collections), so the
-- keyword leg's weight in the fusion is multiplied by exp(:rarity_weight × (rarity - 0.6)):
-- more than 1 above 0.6, less below.
query_rarity AS MATERIALIZED (
    SELECT coalesce(avg(ln(1 + (c.n - q.df + 0.5) / (q.df + 0.5))) / nullif(ln(max(c.n)), 0),
                    0.6) AS rarity
    FROM query_lexemes q, corpus c
),
-- `tsq` (all the lexemes, OR) is what highlights mark. `candidates` picks the chunks to score:
-- the rarest lexeme and the next rarest ones while their document frequencies add up to at
-- most the budget; when even the rarest is in more than four budgets' worth of chunks, the
-- chunks with both of the two rarest. Every candidate is then scored with all the lexemes:
-- only chunks that have nothing but common lexemes (each worth little, having a low idf) are
-- never scored.
keyword_query AS MATERIALIZED (
    SELECT CAST(string_agg(quoted, ' | ') AS tsquery) AS tsq,
           array_agg(lexeme) AS lexemes,
           CAST(CASE WHEN min(df) > 4 * :keyword_budget AND count(*) > 1
                     THEN string_agg(quoted, ' & ') FILTER (WHERE n <= 2)
                     ELSE string_agg(quoted, ' | ') FILTER (WHERE running_df <= :keyword_budget
                                                                  OR n = 1)
                END AS tsquery) AS candidates
    FROM query_lexemes
),
-- A filtered or restricted search first adds up the chunks of the documents it may see,
-- stopping past a limit. When they are at most that many (or the whole collection is) both
-- legs read those chunks directly: every keyword match is scored and the vector leg scans
-- exactly. Otherwise the legs use their indexes. An exact scan costs what it reads, a filtered
-- HNSW scan about k × (collection / visible), so the limit grows with the square root of the
-- collection's size: the threshold up to 100k chunks, 3.16 times it at 1M (`small`). Scoring
-- a keyword match costs more than a distance, so the keyword leg reads the visible chunks
-- directly only up to the threshold itself (`few`).
-- The running sum is one scan for both limits: a materialized CTE is computed only as far as
-- it is read, and each reader continues from the rows already computed. A leg that is off
-- never reads its limit, and an open search reads neither. Every document it counts has a
-- chunk, so the larger limit plus one rows always reach past it: the LIMIT tells the planner
-- that the scan stops early.
visible_limits AS MATERIALIZED (
    SELECT c.n, :exact_threshold * sqrt(greatest(c.n, 100000) / 100000) AS chunks
    FROM (SELECT coalesce((SELECT n FROM corpus), 0) AS n) AS c
),
visible_running AS MATERIALIZED (
    SELECT d.id, sum(d.chunk_count) OVER (ROWS UNBOUNDED PRECEDING) AS running
    FROM documents d
    WHERE d.collection_id = :collection_id
      AND d.chunk_count > 0
      AND /* visible */ TRUE
    LIMIT (SELECT CAST(ceil(chunks) AS bigint) + 1 FROM visible_limits)
),
visible_small AS MATERIALIZED (
    SELECT CASE WHEN CAST(:restricted AS boolean)
                THEN NOT EXISTS (SELECT FROM visible_running r WHERE r.running > l.chunks)
                ELSE l.n <= l.chunks
           END AS small
    FROM visible_limits l
),
visible_few AS MATERIALIZED (
    SELECT CASE WHEN CAST(:restricted AS boolean)
                THEN NOT EXISTS (SELECT FROM visible_running r
                                 WHERE r.running > :exact_threshold)
                ELSE l.n <= :exact_threshold
           END AS few
    FROM visible_limits l
),
-- The documents the search may see, for the legs that read them all (only when they are
-- few). A restricted search that found them small has every one in its count already;
-- otherwise they are read again, with the same checks.
visible_documents AS (
    SELECT r.id
    FROM visible_running r
    WHERE CAST(:restricted AS boolean) AND (SELECT small FROM visible_small)
    UNION ALL
    SELECT d.id
    FROM documents d
    WHERE NOT (CAST(:restricted AS boolean) AND (SELECT small FROM visible_small))
      AND d.collection_id = :collection_id
      AND /* visible */ TRUE
),
-- The candidate chunks: from the GIN index alone within the budget, or, when the search may
-- see few chunks, every one of those that matches any query lexeme, read document by document
-- (so a common lexeme never makes the GIN index list the whole collection). A restricted
-- search whose budget candidates leave fewer visible chunks than the leg needs, while its
-- visible chunks are not many (`small`), reads those directly too: the budget is a guess
-- about the whole collection, and a selective filter can leave it short.
-- With the in-process keyword index, its candidates come first: the chunks with the highest
-- BM25 scores in the collection, best first, with their documents and scores, computed from
-- the same tsvectors, statistics and formula as the scoring below (app/lexical/index.py; the
-- scores are tested equal chunk by chunk). The service passes them only when the index has
-- applied every chunk change this search can see. In that order, each one's document is
-- checked until the leg has enough. The index left the leg short when it returned fewer than
-- every match (`keyword_partial`) and too few of them are visible; then, or when it gave
-- none, the leg runs without it.
keyword_indexed AS MATERIALIZED (
    SELECT f.id, f.document_id, f.score, f.ord
    FROM unnest(CAST(:keyword_ids AS bigint[]), CAST(:keyword_documents AS bigint[]),
                CAST(:keyword_scores AS float8[])) WITH ORDINALITY AS f(id, document_id, score, ord)
    WHERE :keyword_depth > 0 AND /* visible document */ (f.document_id)
    ORDER BY f.ord
    LIMIT :keyword_fetch
),
keyword_indexed_short AS MATERIALIZED (
    SELECT CAST(:keyword_ids AS bigint[]) IS NULL
           OR (CAST(:keyword_partial AS boolean)
               AND (SELECT count(*) FROM keyword_indexed) < :keyword_fetch) AS short
),
keyword_budget_candidates AS MATERIALIZED (
    SELECT c.id, c.document_id, c.tsv, c.length
    FROM chunks c
    WHERE c.collection_id = :collection_id
      AND :keyword_depth > 0
      AND CASE WHEN (SELECT short FROM keyword_indexed_short)
               THEN NOT (SELECT few FROM visible_few)
               ELSE false
          END
      AND c.tsv @@ (SELECT candidates FROM keyword_query)
),
-- The budget's own count comes first: the visible chunks are counted up to the larger limit
-- only when the budget falls short.
keyword_budget_short AS MATERIALIZED (
    SELECT CAST(:restricted AS boolean)
           AND (SELECT count(*)
                -- A scalar subquery per candidate (a lookup by primary key): never a join
                -- that could scan the collection's documents.
                FROM (SELECT
                      FROM keyword_budget_candidates b
                      WHERE /* visible document */ (b.document_id)
                      LIMIT :keyword_fetch) AS passing) < :keyword_fetch
           AND (SELECT small FROM visible_small) AS short
),
keyword_candidates AS MATERIALIZED (
    SELECT b.id, b.document_id, b.tsv, b.length
    FROM keyword_budget_candidates b
    WHERE CASE WHEN (SELECT short FROM keyword_indexed_short)
               THEN NOT (SELECT short FROM keyword_budget_short)
               ELSE false
          END
    UNION ALL
    SELECT c.id, c.document_id, c.tsv, c.length
    FROM visible_documents d
    CROSS JOIN LATERAL (
        SELECT c.id, c.document_id, c.tsv, c.length
        FROM chunks c
        WHERE c.collection_id = :collection_id AND c.document_id = d.id
        OFFSET 0
    ) AS c
    WHERE :keyword_depth > 0
      AND CASE WHEN (SELECT short FROM keyword_indexed_short)
               THEN (SELECT few FROM visible_few) OR (SELECT short FROM keyword_budget_short)
               ELSE false
          END
      AND c.tsv @@ (SELECT tsq FROM keyword_query)
),
-- Exact BM25: term frequencies come from the stored tsvector, cut down to the query's
-- lexemes before unnesting (mark them with weight B, keep only B). As in BM25F, a lexeme that
-- is also in the title or headings (weight A) gets `title_weight` - 1 more: a title names what
-- the whole document is about. That test is a lookup in the tsvector (`@@` on one weighted
-- lexeme), not another pass over it. Best first.
keyword_scored AS MATERIALIZED (
    SELECT m.id, m.document_id,
           sum(w.weight * f.tf * (CAST(:k1 AS float8) + 1)
               / (f.tf + CAST(:k1 AS float8) * (1 - CAST(:b AS float8)
                                               + CAST(:b AS float8) * m.length / c.avgdl)))
             AS score
    FROM keyword_candidates m
    CROSS JOIN corpus c
    CROSS JOIN LATERAL (
        SELECT u.lexeme, coalesce(array_length(u.positions, 1), 1) AS tf
        FROM unnest(ts_filter(setweight(m.tsv, 'B', (SELECT lexemes FROM keyword_query)),
                              '{b}')) AS u
    ) AS t
    JOIN query_weights w ON w.lexeme = t.lexeme
    CROSS JOIN LATERAL (
        SELECT t.tf + (CAST(:title_weight AS float8) - 1) * CAST(m.tsv @@ w.in_title AS integer)
                 AS tf
    ) AS f
    GROUP BY m.id, m.document_id, m.length
    ORDER BY score DESC, m.id
),
-- In score order, each candidate's document is checked (deletion, ACL, filters) through its
-- primary key until enough have passed: an open search checks about as many as it keeps.
-- The keyword index's candidates were checked already, and come with their scores.
keyword_visible AS (
    SELECT i.id, i.document_id, i.score
    FROM keyword_indexed i
    WHERE NOT (SELECT short FROM keyword_indexed_short)
    UNION ALL
    (SELECT s.id, s.document_id, s.score
     FROM keyword_scored s
     WHERE /* visible document */ (s.document_id)
     LIMIT :keyword_fetch)
),
-- With one hit per document, each document keeps its best chunk.
keyword_ranked AS (
    SELECT id, document_id, score,
           CASE WHEN CAST(:per_document AS boolean) THEN document_id ELSE id END AS key,
           row_number() OVER (ORDER BY score DESC, id) AS rank
    FROM (SELECT DISTINCT ON (CASE WHEN CAST(:per_document AS boolean) THEN document_id ELSE id END) *
          FROM keyword_visible
          ORDER BY CASE WHEN CAST(:per_document AS boolean) THEN document_id ELSE id END, score DESC, id) AS best
    ORDER BY score DESC, id
    LIMIT :keyword_depth
),
-- The vector leg has three sources. The in-process cache's candidates come first when the
-- service passes them; when they leave fewer visible rows than the leg needs (and were all
-- the cache was asked for), or when there are none, the leg falls back as a search without
-- the cache does: an exact scan when the search may see few chunks, else the HNSW index.
-- Only that fallback counts the visible chunks: a cache that delivers costs no count. An exact
-- scan that is asked for replaces them all.
--
-- The cache's candidates, nearest first: each must still exist (a deleted or re-ingested
-- chunk is gone from the table) and pass the same document checks; distances are recomputed
-- from the stored vectors. So the cache's freshness changes recall, never correctness.
vector_cached AS MATERIALIZED (
    SELECT c.id, c.document_id,
           /* embedding */ c.embedding <=> CAST(:query_vector AS vector) AS distance, f.ord
    FROM unnest(CAST(:cached_ids AS bigint[])) WITH ORDINALITY AS f(id, ord)
    JOIN chunks c ON c.collection_id = :collection_id AND c.id = f.id
    WHERE :vector_depth > 0 AND NOT CAST(:vector_exact AS boolean)
      AND /* visible document */ (c.document_id)
    ORDER BY f.ord
    LIMIT :vector_fetch
),
-- Whether the cache left the leg short: it passed no candidates (none asked, or the service
-- keeps no cache), or passed fewer than every vector it holds (`cached_partial`) and too few
-- of them are visible. A cache that returned every vector it holds left nothing out.
-- The CASEs that read it fix the order: the visible chunks are counted only when it is short.
vector_short AS MATERIALIZED (
    SELECT CAST(:cached_ids AS bigint[]) IS NULL
           OR (CAST(:cached_partial AS boolean)
               AND (SELECT count(*) FROM vector_cached) < :vector_fetch) AS short
),
-- The exact scan reads the chunks of the visible documents.
vector_exact AS (
    SELECT c.id, c.document_id, c.embedding <=> CAST(:query_vector AS vector) AS distance
    FROM visible_documents d
    CROSS JOIN LATERAL (
        SELECT c.id, c.document_id, /* embedding */ c.embedding AS embedding
        FROM chunks c
        WHERE c.collection_id = :collection_id AND c.document_id = d.id
        OFFSET 0
    ) AS c
    WHERE :vector_depth > 0
      AND (CAST(:vector_exact AS boolean)
           OR CASE WHEN (SELECT short FROM vector_short) THEN (SELECT small FROM visible_small)
                   ELSE false
              END)
    -- "+ 0" keeps the planner from answering this ORDER BY with the HNSW index.
    ORDER BY (c.embedding <=> CAST(:query_vector AS vector)) + 0, c.id
    LIMIT :vector_fetch
),
-- pgvector's iterative scan (relaxed order) keeps reading the graph until enough rows pass the
-- ACL and the filters, checked per row as a subquery so that the index always leads; the
-- outer ORDER BY restores the exact distance order.
vector_ann AS (
    SELECT c.id, c.document_id,
           /* embedding */ c.embedding <=> CAST(:query_vector AS vector) AS distance
    FROM chunks c
    WHERE c.collection_id = :collection_id
      AND :vector_depth > 0 AND NOT CAST(:vector_exact AS boolean)
      AND CASE WHEN (SELECT short FROM vector_short) THEN NOT (SELECT small FROM visible_small)
               ELSE false
          END
      AND /* visible document */ (c.document_id)
    ORDER BY /* embedding */ c.embedding <=> CAST(:query_vector AS vector)
    LIMIT :vector_fetch
),
vector_ranked AS (
    SELECT id, document_id, distance,
           CASE WHEN CAST(:per_document AS boolean) THEN document_id ELSE id END AS key,
           row_number() OVER (ORDER BY distance, id) AS rank
    FROM (SELECT DISTINCT ON (CASE WHEN CAST(:per_document AS boolean) THEN document_id ELSE id END) *
          FROM (SELECT * FROM vector_exact
                UNION ALL SELECT id, document_id, distance FROM vector_cached
                UNION ALL SELECT * FROM vector_ann) AS v
          ORDER BY CASE WHEN CAST(:per_document AS boolean) THEN document_id ELSE id END, distance, id) AS best
    ORDER BY distance, id
    LIMIT :vector_depth
),
-- Weighted reciprocal rank fusion (`rrf`), or a weighted sum of the legs' scores, each on its
-- own scale for this query (`minmax`: 0 for the leg's last hit, 1 for its first; `zscore`:
-- standard deviations above the mean of its hits; a distance counts the other way). A hit that
-- one leg did not return counts as that leg's last (with `minmax`, 0 even when the leg returned
-- one hit, or none).
-- With one hit per document, the chunk shown is the one from the leg that ranked the
-- document higher.
-- Each leg's scale for this query (only for score fusion): its hits' scores, higher better.
leg_scales AS MATERIALIZED (
    SELECT k.low AS k_low, k.high AS k_high, k.mean AS k_mean, k.spread AS k_spread,
           v.low AS v_low, v.high AS v_high, v.mean AS v_mean, v.spread AS v_spread
    FROM (SELECT min(score) AS low, max(score) AS high, avg(score) AS mean,
                 stddev_pop(score) AS spread
          FROM keyword_ranked WHERE CAST(:fusion AS text) <> 'rrf') AS k,
         (SELECT min(-distance) AS low, max(-distance) AS high, avg(-distance) AS mean,
                 stddev_pop(-distance) AS spread
          FROM vector_ranked WHERE CAST(:fusion AS text) <> 'rrf') AS v
),
leg_weights AS MATERIALIZED (
    SELECT CAST(:keyword_weight AS float8)
             * exp(CAST(:rarity_weight AS float8) * (r.rarity - 0.6)) AS keyword,
           CAST(:vector_weight AS float8) AS vector
    FROM query_rarity r
),
fused AS MATERIALIZED (
    SELECT CASE WHEN v.rank IS NULL OR k.rank <= v.rank THEN k.id ELSE v.id END AS id,
           coalesce(k.document_id, v.document_id) AS document_id,
           k.rank AS keyword_rank, k.score AS keyword_score,
           v.rank AS vector_rank, v.distance AS vector_distance,
           CASE CAST(:fusion AS text)
               WHEN 'rrf'
               THEN coalesce(w.keyword / (CAST(:rrf_k AS float8) + k.rank), 0)
                    + coalesce(w.vector / (CAST(:rrf_k AS float8) + v.rank), 0)
               WHEN 'minmax'
               THEN w.keyword
                      * CASE WHEN k.score IS NULL THEN 0
                             ELSE coalesce((k.score - s.k_low) / nullif(s.k_high - s.k_low, 0), 1)
                        END
                    + w.vector
                      * CASE WHEN v.distance IS NULL THEN 0
                             ELSE coalesce((-v.distance - s.v_low) / nullif(s.v_high - s.v_low, 0), 1)
                        END
               ELSE w.keyword
                      * coalesce((coalesce(k.score, s.k_low) - s.k_mean) / nullif(s.k_spread, 0), 0)
                    + w.vector
                      * coalesce((coalesce(-v.distance, s.v_low) - s.v_mean)
                                 / nullif(s.v_spread, 0), 0)
           END AS fused_score
    FROM keyword_ranked k
    FULL JOIN vector_ranked v ON v.key = k.key
    CROSS JOIN leg_scales s
    CROSS JOIN leg_weights w
),
-- Boosts multiply the fused score and stay within bounds: recency decays from 1 to a floor
-- (documents without the date get the floor), popularity grows logarithmically to a cap.
boosted AS (
    SELECT f.*, d.external_id, d.title, d.source, d.metadata,
           CASE WHEN CAST(:recency_half_life_days AS float8) IS NULL THEN 1.0
                WHEN a.age_days IS NULL THEN CAST(:recency_floor AS float8)
                ELSE CAST(:recency_floor AS float8) + (1 - CAST(:recency_floor AS float8))
                     * power(0.5, greatest(a.age_days, 0)
                                  / CAST(:recency_half_life_days AS float8))
           END AS recency_boost,
           CASE WHEN CAST(:popularity_weight AS float8) IS NULL THEN 1.0
                ELSE least(1 + CAST(:popularity_weight AS float8)
                               * ln(1 + greatest(d.popularity, 0)),
                           CAST(:popularity_max AS float8))
           END AS popularity_boost
    FROM fused f
    -- One primary-key lookup per fused row ("OFFSET 0" keeps it a lookup, never a scan of
    -- the collection's documents).
    CROSS JOIN LATERAL (
        SELECT d.external_id, d.title, d.source, d.metadata, d.popularity,
               d.created_at, d.updated_at, d.published_at
        FROM documents d
        WHERE d.collection_id = :collection_id AND d.id = f.document_id
        OFFSET 0
    ) AS d
    CROSS JOIN LATERAL (
        SELECT extract(epoch FROM now() - CASE CAST(:recency_field AS text)
                                              WHEN 'created_at' THEN d.created_at
                                              WHEN 'updated_at' THEN d.updated_at
                                              ELSE d.published_at
                                          END) / 86400.0 AS age_days
    ) AS a
),
page AS (
    SELECT *, fused_score * recency_boost * popularity_boost AS score
    FROM boosted
    ORDER BY score DESC, id
    LIMIT :limit OFFSET :offset
)
SELECT p.id AS chunk_id, p.external_id AS document_id, c.ordinal, c.heading_path,
       c.text, p.title, p.source, p.metadata,
       p.score, p.fused_score, p.keyword_rank, p.keyword_score, p.vector_rank,
       p.vector_distance, p.recency_boost, p.popularity_boost,
       -- How many of the cache's candidates passed, and how far down its list that took.
       (SELECT count(*) FROM vector_cached) AS cached_visible,
       (SELECT max(ord) FROM vector_cached) AS cached_examined,
       -- Whether the keyword index's candidates served the keyword leg; how many passed, and
       -- how far down its list that took.
       NOT (SELECT short FROM keyword_indexed_short) AS keyword_indexed,
       (SELECT count(*) FROM keyword_indexed) AS keyword_visible,
       (SELECT max(ord) FROM keyword_indexed) AS keyword_examined,
       -- ts_headline costs a few milliseconds a hit: only when asked.
       CASE WHEN CAST(:highlight AS boolean)
            THEN ts_headline(c.text_config, c.text, (SELECT tsq FROM keyword_query),
                             :headline_options)
       END AS highlight
FROM page p
JOIN chunks c ON c.collection_id = :collection_id AND c.id = p.id
ORDER BY p.score DESC, p.id;
