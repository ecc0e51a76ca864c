-- The search result cache's view of a collection, read before a search in its transaction.

-- name: collection_position
-- The collection's latest change-log position: every write that can change a search result
-- (chunk insert or delete, document field update) appends to the log, so a cached result keyed
-- by this position cannot outlive a write. Log positions are taken before commit, so a slow
-- writer could still commit a position lower than one already seen: `settled` is true only when
-- no other transaction holds a transaction id (every writer does, and holds a lock on it until
-- it ends), and only then may the result be stored.
SELECT c.id AS collection_id,
       coalesce((SELECT max(l.seq) FROM change_log l WHERE l.collection_id = c.id), 0)
           AS position,
       NOT EXISTS (
           SELECT FROM pg_locks k
           WHERE k.locktype = 'transactionid' AND k.pid IS DISTINCT FROM pg_backend_pid()
       ) AS settled
FROM collections c
WHERE c.name = :name;
