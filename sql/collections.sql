-- Collections: one namespace per corpus or tenant, each tied to one embedding model.

-- name: create_collection
INSERT INTO collections (name, description, embedding_model, embedding_dim, text_config, settings)
VALUES (:name, :description, :embedding_model, :embedding_dim, CAST(:text_config AS regconfig),
        CAST(:settings AS jsonb))
ON CONFLICT (name) DO NOTHING
RETURNING id, name, description, embedding_model, embedding_dim,
          CAST(text_config AS text) AS text_config, settings, created_at;

-- name: get_collection
SELECT id, name, description, embedding_model, embedding_dim,
       CAST(text_config AS text) AS text_config, settings, created_at
FROM collections
WHERE name = :name;

-- name: list_collections
-- All collections, or the one named by :name.
-- Counts come from documents only: chunk_count is kept per document by the write path.
SELECT c.id, c.name, c.description, c.embedding_model, c.embedding_dim,
       CAST(c.text_config AS text) AS text_config, c.settings, c.created_at,
       count(d.id) FILTER (WHERE d.deleted_at IS NULL) AS documents,
       coalesce(sum(d.chunk_count) FILTER (WHERE d.deleted_at IS NULL), 0) AS chunks
FROM collections c
LEFT JOIN documents d ON d.collection_id = c.id
WHERE CAST(:name AS text) IS NULL OR c.name = :name
GROUP BY c.id
ORDER BY c.name;

-- name: text_config_exists
SELECT EXISTS (SELECT 1 FROM pg_ts_config WHERE cfgname = :text_config);

-- name: delete_collection
DELETE FROM collections WHERE name = :name RETURNING id;
