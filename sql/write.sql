-- The store step of the write path. All statements run inside the one transaction that writes
-- a batch of documents, so readers see each document's old version or its new one, never a mix.

-- name: existing_documents
-- What is stored already for a batch of external ids: decides skip / metadata update / rewrite.
SELECT external_id, id, source, content_hash, metadata, acl, popularity, published_at,
       deleted_at
FROM documents
WHERE collection_id = :collection_id
  AND external_id = ANY(CAST(:external_ids AS text[]));

-- name: set_write_memory
-- For this transaction only: the statistics trigger's transition table and lexeme aggregate.
SELECT set_config('work_mem', :memory, true);

-- name: upsert_documents
-- One row per document of the batch; a re-ingest bumps the version and revives a soft delete.
-- ACLs travel as JSON arrays because unnest() would flatten a text[][].
INSERT INTO documents AS d (
    collection_id, external_id, title, source, content_hash, metadata, acl,
    popularity, published_at, chunk_count
)
SELECT :collection_id, u.external_id, u.title, u.source, u.content_hash, u.metadata,
       ARRAY(SELECT jsonb_array_elements_text(u.acl)), u.popularity, u.published_at,
       u.chunk_count
FROM unnest(
    CAST(:external_ids AS text[]),
    CAST(:titles AS text[]),
    CAST(:sources AS text[]),
    CAST(:content_hashes AS text[]),
    CAST(:metadata AS jsonb[]),
    CAST(:acls AS jsonb[]),
    CAST(:popularity AS double precision[]),
    CAST(:published_at AS timestamptz[]),
    CAST(:chunk_counts AS integer[])
) AS u(external_id, title, source, content_hash, metadata, acl, popularity, published_at,
       chunk_count)
ON CONFLICT (collection_id, external_id) DO UPDATE SET
    title = excluded.title,
    source = excluded.source,
    content_hash = excluded.content_hash,
    metadata = excluded.metadata,
    acl = excluded.acl,
    popularity = excluded.popularity,
    published_at = excluded.published_at,
    chunk_count = excluded.chunk_count,
    version = d.version + 1,
    updated_at = now(),
    deleted_at = NULL
RETURNING d.external_id, d.id, d.version;

-- name: delete_chunks
-- Old chunks of re-ingested documents go, and the change log records each one.
WITH gone AS (
    DELETE FROM chunks
    WHERE collection_id = :collection_id
      AND document_id = ANY(CAST(:document_ids AS bigint[]))
    RETURNING collection_id, id
)
INSERT INTO change_log (collection_id, chunk_id, op)
SELECT collection_id, id, 'D' FROM gone;

-- name: delete_sections
DELETE FROM sections
WHERE collection_id = :collection_id
  AND document_id = ANY(CAST(:document_ids AS bigint[]));

-- name: log_inserted_chunks
INSERT INTO change_log (collection_id, chunk_id, op)
SELECT collection_id, id, 'I'
FROM chunks
WHERE collection_id = :collection_id
  AND document_id = ANY(CAST(:document_ids AS bigint[]))
ORDER BY id;

-- name: cached_embeddings
SELECT text_hash, embedding
FROM embedding_cache
WHERE model = :model
  AND text_hash = ANY(CAST(:text_hashes AS bytea[]));
