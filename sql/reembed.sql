-- Re-embedding a collection (app/ingest/reembed.py): the next model's vectors go into the
-- vector column the collection does not read, then the collection switches over. Statements
-- say `/* next */ embedding_alt` for that column; the code puts the collection's own there
-- (one of two fixed names).

-- name: lock_collection
-- The collection for a change of its vector state: writes in flight (FOR KEY SHARE,
-- sql/collections.sql) finish first, and new ones wait until this transaction ends.
SELECT id, name, description, embedding_model, embedding_dim,
       CAST(text_config AS text) AS text_config, settings, created_at,
       vector_column, vectors_version, next_model, next_dim
FROM collections
WHERE id = :collection_id
FOR UPDATE;

-- name: get_collection
SELECT id, name, description, embedding_model, embedding_dim,
       CAST(text_config AS text) AS text_config, settings, created_at,
       vector_column, vectors_version, next_model, next_dim
FROM collections
WHERE id = :collection_id;

-- name: set_next
UPDATE collections SET next_model = :model, next_dim = :dim WHERE id = :collection_id;

-- name: chunk_counts
-- The collection's chunks, and how many have their next vector already.
SELECT count(*) AS total, count(/* next */ embedding_alt) AS done
FROM chunks
WHERE collection_id = :collection_id;

-- name: chunks_to_embed
-- The next chunks (in id order, after `:after`) without their next vector: what is embedded.
SELECT id, context, text
FROM chunks
WHERE collection_id = :collection_id AND id > :after AND /* next */ embedding_alt IS NULL
ORDER BY id
LIMIT :limit;

-- name: store_vectors
-- Vectors travel as text (pgvector's input form), one array element each; a chunk deleted
-- meanwhile is simply not updated.
UPDATE chunks AS c SET /* next */ embedding_alt = CAST(u.vector AS vector)
FROM unnest(CAST(:ids AS bigint[]), CAST(:vectors AS text[])) AS u(id, vector)
WHERE c.collection_id = :collection_id AND c.id = u.id AND /* next */ c.embedding_alt IS NULL;

-- name: switch
-- The next version becomes the collection's: its model, dimension, column and version, at once.
UPDATE collections
SET embedding_model = next_model, embedding_dim = next_dim,
    vector_column = other_vector_column(vector_column), vectors_version = vectors_version + 1,
    next_model = NULL, next_dim = NULL
WHERE id = :collection_id AND next_model IS NOT NULL
RETURNING vectors_version;

-- name: clear_vectors
-- Empty the column the collection does not read, a batch at a time in id order (the old
-- version's vectors after a switch, an abandoned re-embedding's before a new one).
UPDATE chunks SET /* next */ embedding_alt = NULL
WHERE collection_id = :collection_id
  AND id IN (SELECT id FROM chunks
             WHERE collection_id = :collection_id AND id > :after
               AND /* next */ embedding_alt IS NOT NULL
             ORDER BY id
             LIMIT :limit)
RETURNING id;

-- name: job_progress
-- A re-embedding job's chunks: how many the collection has, how many are done.
UPDATE jobs
SET chunks_total = :total, chunks = :done, embedded = embedded + :embedded, updated_at = now()
WHERE id = :job_id;
