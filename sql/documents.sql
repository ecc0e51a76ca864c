-- Reading and managing stored documents: list, show, metadata/ACL updates, delete and purge.

-- Reads take the reader's visibility: documents whose ACL shares one of `:principals` (NULL:
-- every document, for admins), and that match the reader's mandatory filter, compiled over `d`
-- where `/* visible */ TRUE` stands (app/documents.py).

-- name: list_documents
-- Most recently updated first; offset pagination, bounded by the caller's limit. `:title`: only
-- titles that contain it (a LIKE pattern whose wildcards the caller escaped).
SELECT d.id, d.external_id, d.title, d.source, d.version, d.metadata, d.acl, d.popularity,
       d.chunk_count, d.created_at, d.updated_at, d.published_at, d.deleted_at
FROM documents d
WHERE d.collection_id = :collection_id
  AND (CAST(:include_deleted AS boolean) OR d.deleted_at IS NULL)
  AND (CAST(:principals AS text[]) IS NULL OR d.acl && CAST(:principals AS text[]))
  AND (CAST(:title AS text) IS NULL OR d.title ILIKE '%' || CAST(:title AS text) || '%')
  AND /* visible */ TRUE
ORDER BY d.updated_at DESC, d.id DESC
LIMIT :limit OFFSET :offset;

-- name: count_documents
SELECT count(*) FILTER (WHERE d.deleted_at IS NULL) AS live,
       count(*) FILTER (WHERE d.deleted_at IS NOT NULL) AS deleted
FROM documents d
WHERE d.collection_id = :collection_id
  AND (CAST(:principals AS text[]) IS NULL OR d.acl && CAST(:principals AS text[]))
  AND (CAST(:title AS text) IS NULL OR d.title ILIKE '%' || CAST(:title AS text) || '%')
  AND /* visible */ TRUE;

-- name: get_document
SELECT d.id, d.external_id, d.title, d.source, d.content_hash, d.version, d.metadata, d.acl,
       d.popularity, d.chunk_count, d.created_at, d.updated_at, d.published_at, d.deleted_at
FROM documents d
WHERE d.collection_id = :collection_id
  AND d.external_id = :external_id
  AND (CAST(:principals AS text[]) IS NULL OR d.acl && CAST(:principals AS text[]))
  AND /* visible */ TRUE;

-- name: lock_document
-- The row a read-modify-write (a metadata merge patch) changes, locked until the transaction
-- ends: concurrent patches of one document apply one after the other, none is lost.
SELECT id, external_id, title, source, content_hash, version, metadata, acl, popularity,
       chunk_count, created_at, updated_at, published_at, deleted_at
FROM documents
WHERE collection_id = :collection_id
  AND external_id = :external_id
FOR UPDATE;

-- name: document_chunks
SELECT id, ordinal, section_ordinal, heading_path, token_count, text
FROM chunks
WHERE collection_id = :collection_id
  AND document_id = :document_id
ORDER BY ordinal;

-- name: document_sections
-- The document's outline: each section (consecutive text under one heading path) with its
-- size, the chunks it was cut into and the first of them (the page links to it).
SELECT s.ordinal, s.heading_path, length(s.text) AS chars,
       count(c.id) AS chunks, coalesce(sum(c.token_count), 0) AS tokens,
       min(c.id) AS first_chunk
FROM sections s
LEFT JOIN chunks c ON c.collection_id = s.collection_id
                  AND c.document_id = s.document_id
                  AND c.section_ordinal = s.ordinal
WHERE s.collection_id = :collection_id
  AND s.document_id = :document_id
GROUP BY s.collection_id, s.document_id, s.ordinal
ORDER BY s.ordinal;

-- name: update_document_fields
-- Metadata, ACL, dates and popularity change without touching chunks or embeddings. The change
-- log records it ('U' per chunk), since filters, ACL and boosts see the new values at once.
WITH doc AS (
    UPDATE documents
    SET metadata = CAST(:metadata AS jsonb),
        acl = CAST(:acl AS text[]),
        popularity = :popularity,
        published_at = :published_at,
        source = :source,
        updated_at = now()
    WHERE collection_id = :collection_id
      AND id = :document_id
    RETURNING collection_id, id
)
INSERT INTO change_log (collection_id, chunk_id, op)
SELECT c.collection_id, c.id, 'U'
FROM chunks c JOIN doc ON c.collection_id = doc.collection_id AND c.document_id = doc.id
ORDER BY c.id;

-- name: purge_document
-- Hard delete of one document; chunks of a live document are logged as deleted first.
WITH doc AS (
    DELETE FROM documents
    WHERE collection_id = :collection_id
      AND external_id = :external_id
    RETURNING collection_id, id, deleted_at
), logged AS (
    INSERT INTO change_log (collection_id, chunk_id, op)
    SELECT c.collection_id, c.id, 'D'
    FROM chunks c JOIN doc ON c.collection_id = doc.collection_id AND c.document_id = doc.id
    WHERE doc.deleted_at IS NULL
)
SELECT count(*) FROM doc;

-- name: purge_deleted
-- Hard delete of every soft-deleted document (their chunks were logged at delete time).
WITH doc AS (
    DELETE FROM documents
    WHERE collection_id = :collection_id
      AND deleted_at IS NOT NULL
    RETURNING id
)
SELECT count(*) FROM doc;

-- name: count_matching
-- The live documents a delete by filter would remove.
SELECT count(*)
FROM documents d
WHERE d.collection_id = :collection_id
  AND d.deleted_at IS NULL
  AND /* visible */ TRUE;

-- name: soft_delete_matching
-- Soft delete of every live document the filter (one document's id, or a delete by filter)
-- matches, or of the first `:limit` of them (NULL: all; a delete job goes a batch at a
-- time). The row stays as a tombstone until purge; its chunks and sections go now, so that
-- every index and the BM25 statistics forget the document at once. The change log says so.
WITH victim AS (
    SELECT d.id
    FROM documents d
    WHERE d.collection_id = :collection_id
      AND d.deleted_at IS NULL
      AND /* visible */ TRUE
    ORDER BY d.id
    LIMIT CAST(:limit AS integer)
    FOR UPDATE
), doc AS (
    UPDATE documents d
    SET deleted_at = now(), updated_at = now(), chunk_count = 0
    FROM victim
    WHERE d.collection_id = :collection_id AND d.id = victim.id
    RETURNING d.collection_id, d.id
), gone AS (
    DELETE FROM chunks c
    USING doc
    WHERE c.collection_id = doc.collection_id AND c.document_id = doc.id
    RETURNING c.collection_id, c.id
), sections_gone AS (
    DELETE FROM sections s
    USING doc
    WHERE s.collection_id = doc.collection_id AND s.document_id = doc.id
), logged AS (
    INSERT INTO change_log (collection_id, chunk_id, op)
    SELECT collection_id, id, 'D' FROM gone
)
SELECT count(*) FROM doc;

-- name: metadata_keys
-- The top-level metadata keys of the most recently updated documents the reader may see (for
-- the search page's filter builder): a sample, so that it costs the same on any collection.
SELECT DISTINCT k.key
FROM (SELECT d.metadata
      FROM documents d
      WHERE d.collection_id = :collection_id AND d.deleted_at IS NULL
        AND (CAST(:principals AS text[]) IS NULL OR d.acl && CAST(:principals AS text[]))
        AND /* visible */ TRUE
      ORDER BY d.updated_at DESC
      LIMIT 1000) AS recent
CROSS JOIN LATERAL jsonb_object_keys(recent.metadata) AS k(key)
ORDER BY k.key
LIMIT 200;
