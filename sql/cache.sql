-- The search result cache's view of a collection, read before a search in its transaction.

-- name: collection_position
-- The collection's latest change-log position: every write that can change a search result
-- (chunk insert or delete, document field update) appends to the log, so a cached result keyed
-- by this position cannot outlive a write. Log sequence numbers are taken before commit, so a
-- slow writer could commit a lower number than one already seen; `settled` is true only when
-- no transaction that writes is in progress, and only then may the result be stored.
SELECT c.id AS collection_id,
       coalesce((SELECT max(l.seq) FROM change_log l WHERE l.collection_id = c.id), 0)
           AS position,
       pg_snapshot_xmin(s.snapshot) = pg_snapshot_xmax(s.snapshot) AS settled
FROM collections c
CROSS JOIN (SELECT pg_current_snapshot() AS snapshot) s
WHERE c.name = :name;
