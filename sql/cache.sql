-- The search result cache's view of a collection, read before a search in its transaction.

-- name: collection_position
-- The collection's latest change-log position: every write that can change a search result
-- (chunk insert or delete, document field update) appends to the log, so a cached result keyed
-- by this position cannot outlive a write. Log positions are taken before commit, so a slow
-- writer could still commit a position lower than one already seen: `settled` is true only when
-- no other client session of this database holds a transaction id (every writer does, and
-- holds a lock on it until it ends), and only then may the result be stored. Background
-- workers (autovacuum's ANALYZE takes a transaction id) never write the change log. A
-- re-embedding changes the collection's vector version, which is part of the key too.
SELECT c.id AS collection_id, c.vectors_version,
       coalesce((SELECT max(l.seq) FROM change_log l WHERE l.collection_id = c.id), 0)
           AS position,
       NOT EXISTS (
           SELECT FROM pg_locks k
           JOIN pg_stat_activity a ON a.pid = k.pid
           WHERE k.locktype = 'transactionid' AND k.pid <> pg_backend_pid()
             AND a.backend_type = 'client backend' AND a.datname = current_database()
       ) AS settled
FROM collections c
WHERE c.name = :name;
