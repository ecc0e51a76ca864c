-- The search result cache's view of a collection, read around a search in its transaction.

-- name: collection_position
-- Read before the search: the collection's latest change-log position (every write that can
-- change a search result, chunk insert or delete or document field update, appends to the log,
-- so a result keyed by this position cannot outlive a write) and the snapshot it was read in.
-- A re-embedding changes the collection's vector version, and `hybrid tune` its settings
-- (search defaults): both are part of the key too.
SELECT c.id AS collection_id, c.vectors_version, CAST(c.settings AS text) AS settings,
       coalesce((SELECT max(l.seq) FROM change_log l WHERE l.collection_id = c.id), 0)
           AS position,
       CAST(pg_current_snapshot() AS text) AS snapshot
FROM collections c
WHERE c.name = :name;

-- name: settled
-- Read after the search, in a new snapshot: whether its result may be stored under the
-- position. Log positions are drawn before commit, so a slow writer could commit a position
-- below one already read. Every writer of the log holds a shared advisory lock on
-- (:lock_class, collection) from before it draws a position until it ends (alembic revision
-- 0014). So the result is settled when no other session holds that lock now and no log row of
-- the collection was committed since the position's snapshot (that row's writer may have been
-- in flight then and finished since).
SELECT NOT EXISTS (
           SELECT FROM pg_locks k
           WHERE k.locktype = 'advisory' AND k.pid <> pg_backend_pid()
             AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND k.classid = CAST(:lock_class AS oid)
             AND k.objid = CAST(CAST(:collection_id AS integer) AS oid) AND k.objsubid = 2
       )
       AND NOT EXISTS (
           SELECT FROM change_log l
           WHERE l.collection_id = :collection_id
             AND l.xid >= pg_snapshot_xmin(CAST(:snapshot AS pg_snapshot))
             AND NOT pg_visible_in_snapshot(l.xid, CAST(:snapshot AS pg_snapshot))
       ) AS settled;
