-- The in-process vector cache (app/ann): what it is built from and how it follows the change
-- log. Its position is a transaction snapshot: a change-log row is applied exactly when the
-- transaction that wrote it is visible in that snapshot (see alembic revision 0007).

-- name: collections
-- Every collection the cache may hold, with what identifies it beyond its id (a collection
-- dropped and created again gets a new creation time).
SELECT c.id, c.name, c.created_at, c.embedding_model, c.embedding_dim, c.vectors_version,
       coalesce(s.chunks, 0) AS chunks
FROM collections c
LEFT JOIN corpus_stats s ON s.collection_id = c.id
ORDER BY c.id;

-- name: snapshot
-- Run first in a REPEATABLE READ transaction: the snapshot every later read of it sees.
SELECT CAST(pg_current_snapshot() AS text) AS snapshot;

-- name: pending
-- How many vector changes the cache has not applied and since when, and the log's head.
SELECT (SELECT coalesce(max(h.seq), 0) FROM change_log h WHERE h.collection_id = :collection_id)
           AS head,
       count(*) AS changes,
       coalesce(extract(epoch FROM now() - min(l.changed_at)), 0) AS seconds
FROM change_log l
WHERE l.collection_id = :collection_id AND l.op <> 'U'
  AND l.xid >= pg_snapshot_xmin(CAST(:position AS pg_snapshot))
  AND NOT pg_visible_in_snapshot(l.xid, CAST(:position AS pg_snapshot));

-- name: changes
-- The vector changes committed since the position, in log order, each insert with its vector
-- (NULL when the chunk is gone again in this same window: its delete follows), read from
-- the collection's vector column at the cache's version (none once it was re-embedded: the
-- cache then builds the new version's index from scratch).
SELECT l.op, l.chunk_id,
       CASE WHEN k.vectors_version = :version
            THEN CASE k.vector_column WHEN 'embedding' THEN c.embedding ELSE c.embedding_alt END
       END AS embedding
FROM change_log l
JOIN collections k ON k.id = l.collection_id
LEFT JOIN chunks c ON l.op = 'I' AND c.collection_id = l.collection_id AND c.id = l.chunk_id
WHERE l.collection_id = :collection_id AND l.op <> 'U'
  AND l.xid >= pg_snapshot_xmin(CAST(:position AS pg_snapshot))
  AND NOT pg_visible_in_snapshot(l.xid, CAST(:position AS pg_snapshot))
ORDER BY l.seq;
