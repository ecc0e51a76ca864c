-- Collections: one namespace per corpus or tenant, each tied to one embedding model (and,
-- while it is re-embedded, to the next one: app/ingest/reembed.py).

-- name: create_collection
INSERT INTO collections (name, description, embedding_model, embedding_dim, text_config, settings)
VALUES (:name, :description, :embedding_model, :embedding_dim, CAST(:text_config AS regconfig),
        CAST(:settings AS jsonb))
ON CONFLICT (name) DO NOTHING
RETURNING id, name, description, embedding_model, embedding_dim,
          CAST(text_config AS text) AS text_config, settings, created_at,
          vector_column, vectors_version, next_model, next_dim;

-- name: get_collection
SELECT id, name, description, embedding_model, embedding_dim,
       CAST(text_config AS text) AS text_config, settings, created_at,
       vector_column, vectors_version, next_model, next_dim
FROM collections
WHERE name = :name;

-- name: list_collections
-- All collections, or the one named by :name.
-- Counts come from documents only: chunk_count is kept per document by the write path.
SELECT c.id, c.name, c.description, c.embedding_model, c.embedding_dim,
       CAST(c.text_config AS text) AS text_config, c.settings, c.created_at,
       c.vector_column, c.vectors_version, c.next_model, c.next_dim,
       count(d.id) FILTER (WHERE d.deleted_at IS NULL) AS documents,
       coalesce(sum(d.chunk_count) FILTER (WHERE d.deleted_at IS NULL), 0) AS chunks
FROM collections c
LEFT JOIN documents d ON d.collection_id = c.id
WHERE CAST(:name AS text) IS NULL OR c.name = :name
GROUP BY c.id
ORDER BY c.name;

-- name: update_settings
-- Merge checked search defaults into a collection's settings (a key set to null is removed:
-- the default applies again).
UPDATE collections
SET settings = jsonb_strip_nulls(settings || CAST(:settings AS jsonb))
WHERE name = :name
RETURNING settings;

-- name: text_config_exists
SELECT EXISTS (SELECT 1 FROM pg_ts_config WHERE cfgname = :text_config);

-- name: delete_collection
DELETE FROM collections WHERE name = :name RETURNING id;

-- name: lock_collection
-- The collection as a write transaction sees it, held until that transaction ends: a
-- re-embedding's switch (FOR UPDATE) waits for the writes in flight, and writes wait for it.
SELECT id, name, description, embedding_model, embedding_dim,
       CAST(text_config AS text) AS text_config, settings, created_at,
       vector_column, vectors_version, next_model, next_dim
FROM collections
WHERE id = :collection_id
FOR KEY SHARE;
