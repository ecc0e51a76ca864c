-- Context for grounded answers. Runs after the search, in its transaction and role, so
-- row-level security on documents still applies: only sections of visible documents come back.

-- name: chunk_sections
-- The parent section of each hit: its heading path, text and size in chunks' tokens.
SELECT c.id AS chunk_id,
       s.document_id,
       s.ordinal AS section_ordinal,
       s.heading_path,
       s.text,
       (SELECT sum(sc.token_count)
        FROM chunks sc
        WHERE sc.collection_id = s.collection_id
          AND sc.document_id = s.document_id
          AND sc.section_ordinal = s.ordinal) AS section_tokens
FROM chunks c
JOIN documents d ON d.collection_id = c.collection_id AND d.id = c.document_id
JOIN sections s ON s.collection_id = c.collection_id
               AND s.document_id = c.document_id
               AND s.ordinal = c.section_ordinal
WHERE c.collection_id = :collection_id
  AND c.id = ANY(CAST(:chunk_ids AS bigint[]))
  AND d.deleted_at IS NULL
  AND d.acl && CAST(:principals AS text[]);
