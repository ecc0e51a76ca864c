-- The in-process keyword index (app/lexical): what it is built from and how it follows the
-- change log, read in a REPEATABLE READ transaction whose snapshot becomes its position (the
-- same rules as the vector cache's, sql/ann.sql).

-- name: postings
-- The chunks' postings from their stored tsvectors, as the SQL leg reads them: per lexeme its
-- position count and whether a position is in the title or headings (weight A). With :ids
-- NULL, every chunk of the collection; else those of the ids that still exist.
SELECT c.id, c.document_id, c.length, u.lexemes, u.tfs, u.titles
FROM chunks c
CROSS JOIN LATERAL (
    SELECT array_agg(t.lexeme) AS lexemes,
           array_agg(coalesce(array_length(t.positions, 1), 1)) AS tfs,
           array_agg('A' = ANY (t.weights)) AS titles
    FROM unnest(c.tsv) AS t
) AS u
WHERE c.collection_id = :collection_id
  AND (CAST(:ids AS bigint[]) IS NULL OR c.id = ANY (CAST(:ids AS bigint[])))
ORDER BY c.id;

-- name: changes
-- The chunk inserts and deletes committed since the position, in log order.
SELECT l.op, l.chunk_id
FROM change_log l
WHERE l.collection_id = :collection_id AND l.op <> 'U'
  AND l.xid >= pg_snapshot_xmin(CAST(:position AS pg_snapshot))
  AND NOT pg_visible_in_snapshot(l.xid, CAST(:position AS pg_snapshot))
ORDER BY l.seq;

-- name: bm25
-- The collection's settings, whose BM25 parameters order the index's long postings.
SELECT settings FROM collections WHERE id = :collection_id;
