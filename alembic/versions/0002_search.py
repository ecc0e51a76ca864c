"""Search: BM25 corpus statistics, an accent-folding text configuration, row-level security.

BM25 needs, per collection, the number of chunks and their total length, and per lexeme the
number of chunks that contain it. Statement-level triggers on `chunks` keep both tables exact
for every write (COPY, re-ingest, delete, purge, cascades), one aggregate per statement. The
collection's row in `corpus_stats` is updated first, so concurrent writers of one collection
queue there instead of deadlocking on lexeme rows.

Searches run as the role `hybrid_reader`, which sees only live documents whose ACL overlaps
the principals the service sets for the transaction (`hybrid.principals`); with none set it
sees nothing. The table owner (the service's own login) is not subject to the policy.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = """
-- English stemming and stop words, with accents folded first: "café" finds "cafe".
CREATE TEXT SEARCH CONFIGURATION english_unaccent (COPY = pg_catalog.english);
ALTER TEXT SEARCH CONFIGURATION english_unaccent
    ALTER MAPPING FOR hword, hword_part, word WITH unaccent, english_stem;
ALTER TABLE collections ALTER COLUMN text_config SET DEFAULT 'english_unaccent';

-- The BM25 length of a chunk: how many indexed tokens (lexeme positions) it has.
CREATE FUNCTION tsvector_token_count(tsv tsvector) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT coalesce(sum(coalesce(array_length(positions, 1), 1)), 0)::integer
      FROM unnest(tsv) $$;

-- A generated column cannot read another one, so the length repeats the tsv expression.
ALTER TABLE chunks ADD COLUMN length integer GENERATED ALWAYS AS (
    tsvector_token_count(
        setweight(to_tsvector(text_config, context), 'A') || to_tsvector(text_config, text)
    )
) STORED;

CREATE TABLE corpus_stats (
    collection_id bigint PRIMARY KEY REFERENCES collections (id) ON DELETE CASCADE,
    chunks        bigint NOT NULL DEFAULT 0,
    total_length  bigint NOT NULL DEFAULT 0
);

-- Document frequency per lexeme, counted in chunks (the unit BM25 ranks).
CREATE TABLE term_stats (
    collection_id bigint NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    lexeme        text NOT NULL,
    chunks        integer NOT NULL,
    PRIMARY KEY (collection_id, lexeme)
);

CREATE FUNCTION count_inserted_chunks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO corpus_stats AS s (collection_id, chunks, total_length)
    SELECT collection_id, count(*), sum(length) FROM new_chunks
    GROUP BY collection_id ORDER BY collection_id
    ON CONFLICT (collection_id) DO UPDATE
        SET chunks = s.chunks + excluded.chunks,
            total_length = s.total_length + excluded.total_length;
    INSERT INTO term_stats AS t (collection_id, lexeme, chunks)
    SELECT c.collection_id, l.lexeme, count(*)
    FROM new_chunks c, unnest(tsvector_to_array(c.tsv)) AS l(lexeme)
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (collection_id, lexeme) DO UPDATE SET chunks = t.chunks + excluded.chunks;
    RETURN NULL;
END $$;

CREATE FUNCTION count_deleted_chunks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE corpus_stats s
    SET chunks = s.chunks - g.chunks, total_length = s.total_length - g.total_length
    FROM (SELECT collection_id, count(*) AS chunks, sum(length) AS total_length
          FROM old_chunks GROUP BY collection_id) g
    WHERE s.collection_id = g.collection_id;
    -- Lexemes that reach zero stay as rows: they weigh nothing and save churn on re-ingest.
    UPDATE term_stats t
    SET chunks = t.chunks - g.chunks
    FROM (SELECT c.collection_id, l.lexeme, count(*) AS chunks
          FROM old_chunks c, unnest(tsvector_to_array(c.tsv)) AS l(lexeme)
          GROUP BY 1, 2) g
    WHERE t.collection_id = g.collection_id AND t.lexeme = g.lexeme;
    RETURN NULL;
END $$;

CREATE TRIGGER chunks_count_inserted AFTER INSERT ON chunks
    REFERENCING NEW TABLE AS new_chunks
    FOR EACH STATEMENT EXECUTE FUNCTION count_inserted_chunks();
CREATE TRIGGER chunks_count_deleted AFTER DELETE ON chunks
    REFERENCING OLD TABLE AS old_chunks
    FOR EACH STATEMENT EXECUTE FUNCTION count_deleted_chunks();

-- Soft-deleted documents keep their row (a tombstone until purge) but lose their chunks, so
-- that every index and statistic forgets them at once.
DELETE FROM chunks c USING documents d
WHERE d.collection_id = c.collection_id AND d.id = c.document_id AND d.deleted_at IS NOT NULL;

INSERT INTO corpus_stats (collection_id, chunks, total_length)
SELECT collection_id, count(*), sum(length) FROM chunks GROUP BY collection_id;
INSERT INTO term_stats (collection_id, lexeme, chunks)
SELECT c.collection_id, l.lexeme, count(*)
FROM chunks c, unnest(tsvector_to_array(c.tsv)) AS l(lexeme)
GROUP BY 1, 2;

-- Row-level security: the second line of defence behind the ACL predicate of every search.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hybrid_reader') THEN
        CREATE ROLE hybrid_reader NOLOGIN;
    END IF;
    IF NOT pg_has_role(current_user, 'hybrid_reader', 'MEMBER') THEN
        EXECUTE format('GRANT hybrid_reader TO %I', current_user);
    END IF;
END $$;

CREATE FUNCTION current_principals() RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT coalesce(nullif(current_setting('hybrid.principals', true), ''), '{}')::text[] $$;

GRANT SELECT ON collections, documents, sections, chunks, corpus_stats, term_stats
    TO hybrid_reader;
ALTER TABLE documents ENABLE ROW LEVEL SECURITY;
CREATE POLICY documents_visible ON documents FOR SELECT TO hybrid_reader
    USING (deleted_at IS NULL AND acl && current_principals());
"""

DOWNGRADE = """
DROP POLICY IF EXISTS documents_visible ON documents;
ALTER TABLE documents DISABLE ROW LEVEL SECURITY;
REVOKE SELECT ON collections, documents, sections, chunks, corpus_stats, term_stats
    FROM hybrid_reader;
DROP FUNCTION IF EXISTS current_principals();
DROP TRIGGER IF EXISTS chunks_count_deleted ON chunks;
DROP TRIGGER IF EXISTS chunks_count_inserted ON chunks;
DROP FUNCTION IF EXISTS count_deleted_chunks();
DROP FUNCTION IF EXISTS count_inserted_chunks();
DROP TABLE IF EXISTS term_stats;
DROP TABLE IF EXISTS corpus_stats;
ALTER TABLE chunks DROP COLUMN IF EXISTS length;
DROP FUNCTION IF EXISTS tsvector_token_count(tsvector);
ALTER TABLE collections ALTER COLUMN text_config SET DEFAULT 'english';
UPDATE collections SET text_config = 'english' WHERE text_config = 'english_unaccent'::regconfig;
UPDATE chunks SET text_config = 'english' WHERE text_config = 'english_unaccent'::regconfig;
DROP TEXT SEARCH CONFIGURATION IF EXISTS english_unaccent;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
