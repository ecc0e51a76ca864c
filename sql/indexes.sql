-- Each collection's HNSW index (a partial index on a typed expression of its vector column,
-- see alembic revisions 0005 and 0013, and app/ingest/vector_index.py). The DDL comes from the
-- database's own definition, so that the index is defined once; the collection id is a
-- bigint, never text from a request. With `:next`, the index of the version a re-embedding
-- is writing (the other column, the next model's dimension, the next version's name).

-- name: vector_index_state
-- One row when the collection has the index: valid, or left invalid by an interrupted build.
SELECT i.indisvalid AS valid
FROM collections c
JOIN pg_index i ON i.indexrelid = to_regclass(vector_index_name(
    c.id, c.vectors_version + CASE WHEN CAST(:next AS boolean) THEN 1 ELSE 0 END))
WHERE c.id = :collection_id;

-- name: vector_index_ddl
SELECT CASE WHEN CAST(:next AS boolean)
            THEN vector_index_ddl(c.id, true, other_vector_column(c.vector_column), c.next_dim,
                                  c.vectors_version + 1)
            ELSE vector_index_ddl(c.id, true, c.vector_column, c.embedding_dim,
                                  c.vectors_version)
       END
FROM collections c
WHERE c.id = :collection_id;

-- name: drop_invalid_vector_index_ddl
SELECT format('DROP INDEX CONCURRENTLY IF EXISTS %I', vector_index_name(
    c.id, c.vectors_version + CASE WHEN CAST(:next AS boolean) THEN 1 ELSE 0 END))
FROM collections c
WHERE c.id = :collection_id;

-- name: drop_vector_index_ddl
-- Drop one version's index (the version a re-embedding replaced, or one it abandoned).
SELECT format('DROP INDEX CONCURRENTLY IF EXISTS %I', vector_index_name(:collection_id, :version));

-- name: try_build_lock
-- One builder per collection at a time, across sessions and instances: a concurrent load into
-- the same collection finds the lock taken and leaves the build to its holder (whose build
-- takes in every row committed before it ends). Held by the session, released by
-- `release_build_lock`, or by the end of the session.
SELECT pg_try_advisory_lock(:lock_class, CAST(:collection_id AS integer));

-- name: release_build_lock
SELECT pg_advisory_unlock(:lock_class, CAST(:collection_id AS integer));

-- name: set_build_memory
-- For this session only (the build runs on a connection of its own, in autocommit mode).
SELECT set_config('maintenance_work_mem', :memory, false);

-- name: analyze_loaded_tables
-- After a bulk load, before the index build: the planner's statistics describe the tables as
-- they were before it (a new collection's documents and chunks are not in them), and until
-- autovacuum catches up it can check a candidate's document through the wrong index.
ANALYZE documents, sections, chunks, term_stats;

-- name: vector_indexes
-- Every version's index of the collection there is (a version's name: vector_index_name).
SELECT indexname FROM pg_indexes
WHERE tablename = 'chunks'
  AND indexname ~ ('^chunks_embedding_' || CAST(:collection_id AS text) || '(_v[0-9]+)?$');
