"""Vector versions: a collection changes its embedding model or dimension without downtime.

- `chunks.embedding` loses its fixed dimension, and `chunks.embedding_alt` joins it: two
  vector columns, untyped, so that collections of different dimensions share the table. A
  collection reads one of them (`collections.vector_column`); a re-embedding job fills the
  other with the new model's vectors while searches go on reading the first, then switches
  the collection over in one transaction and empties the old column.
- Each collection's HNSW index is on a typed expression of its column,
  `CAST(embedding AS vector(384))` (pgvector indexes need a dimension), partial on the
  collection as before (0005). Its name carries the collection's vector version
  (`collections.vectors_version`, 1 for the name it had), so that the next version's index is
  built beside the serving one before the switch. The indexes are rebuilt by this revision,
  which holds the chunks table meanwhile: on a large database, plan the upgrade for a quiet
  moment (a minute or two per million chunks on two cores).
- The embedding cache's key gains the dimension (`<model>#<tokens>@<dim>`).
- `collections.next_model` / `next_dim`: the model and dimension a re-embedding is moving the
  collection to (NULL when none is).
- Jobs gain the `reembed` kind and `chunks_total` (what a re-embedding counts in); a
  collection has one unfinished re-embedding at most.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from alembic import context, op

from app.settings import load_settings

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

DROP_VECTOR_INDEXES = """
DO $$
DECLARE
    index_name text;
BEGIN
    FOR index_name IN
        SELECT indexname FROM pg_indexes
        WHERE tablename = 'chunks' AND indexname ~ '^chunks_embedding_[0-9]+(_v[0-9]+)?$'
    LOOP
        EXECUTE format('DROP INDEX %I', index_name);
    END LOOP;
END $$;
"""

UPGRADE = (
    DROP_VECTOR_INDEXES
    + """
DROP TRIGGER zz_collections_drop_vector_index ON collections;
DROP FUNCTION drop_vector_index();
DROP FUNCTION vector_index_ddl(bigint, boolean);
DROP FUNCTION vector_index_name(bigint);

ALTER TABLE chunks ALTER COLUMN embedding TYPE vector, ALTER COLUMN embedding DROP NOT NULL,
    ADD COLUMN embedding_alt vector;
-- A type change resets the storage to the type's default: vectors stay in the row (0004).
ALTER TABLE chunks ALTER COLUMN embedding SET STORAGE MAIN,
    ALTER COLUMN embedding_alt SET STORAGE MAIN;
-- The embedding cache's key names the dimension too: one model may give vectors of several.
UPDATE embedding_cache SET model = model || '@' || vector_dims(embedding);

ALTER TABLE collections
    ADD COLUMN vector_column text NOT NULL DEFAULT 'embedding'
        CHECK (vector_column IN ('embedding', 'embedding_alt')),
    ADD COLUMN vectors_version integer NOT NULL DEFAULT 1 CHECK (vectors_version > 0),
    ADD COLUMN next_model text,
    ADD COLUMN next_dim integer CHECK (next_dim > 0),
    ADD CONSTRAINT collections_next_check CHECK ((next_model IS NULL) = (next_dim IS NULL));

-- The other vector column: where a re-embedding writes.
CREATE FUNCTION other_vector_column(vector_column text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT CASE vector_column WHEN 'embedding' THEN 'embedding_alt' ELSE 'embedding' END $$;

CREATE FUNCTION vector_index_name(collection bigint, version integer) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT 'chunks_embedding_' || collection
             || CASE WHEN version = 1 THEN '' ELSE '_v' || version END $$;

CREATE FUNCTION vector_index_ddl(
    collection bigint, online boolean, vector_column text, dim integer, version integer
) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT format('CREATE INDEX %s IF NOT EXISTS %I ON chunks '
                    'USING hnsw ((CAST(%I AS vector(%s))) vector_cosine_ops) '
                    'WITH (m = 16, ef_construction = 64) WHERE collection_id = %s',
                    CASE WHEN online THEN 'CONCURRENTLY' ELSE '' END,
                    vector_index_name(collection, version), vector_column, dim, collection) $$;

CREATE FUNCTION drop_vector_indexes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    index_name text;
BEGIN
    FOR index_name IN
        SELECT indexname FROM pg_indexes
        WHERE tablename = 'chunks'
          AND indexname ~ ('^chunks_embedding_' || OLD.id || '(_v[0-9]+)?$')
    LOOP
        EXECUTE format('DROP INDEX IF EXISTS %I', index_name);
    END LOOP;
    RETURN NULL;
END $$;

-- Named to fire after the foreign keys' cascades (triggers fire in name order), once the
-- collection's chunks are gone.
CREATE TRIGGER zz_collections_drop_vector_index AFTER DELETE ON collections
    FOR EACH ROW EXECUTE FUNCTION drop_vector_indexes();

DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT id, embedding_dim FROM collections ORDER BY id LOOP
        EXECUTE vector_index_ddl(c.id, false, 'embedding', c.embedding_dim, 1);
    END LOOP;
END $$;

ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('ingest', 'delete', 'reembed'));
ALTER TABLE jobs ADD COLUMN chunks_total integer;
-- One re-embedding of a collection at a time.
CREATE UNIQUE INDEX jobs_one_reembed_idx ON jobs (collection_id)
    WHERE kind = 'reembed' AND state IN ('queued', 'running');
"""
)


def downgrade_sql(dim: int) -> str:
    """Back to one fixed-dimension column: only when every collection reads `embedding` with
    vectors of the configured dimension and none is being re-embedded."""
    return (
        """
DO $$
BEGIN
    IF EXISTS (SELECT FROM collections WHERE vector_column <> 'embedding'
                                          OR next_model IS NOT NULL OR embedding_dim <> {dim}) THEN
        RAISE EXCEPTION 'collections have been re-embedded or have other dimensions than '
                        '{dim}: revision 0012 keeps one dimension in one column';
    END IF;
END $$;
DELETE FROM jobs WHERE kind = 'reembed';
DROP INDEX jobs_one_reembed_idx;
ALTER TABLE jobs DROP COLUMN chunks_total;
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('ingest', 'delete'));
"""
        + DROP_VECTOR_INDEXES
        + """
DROP TRIGGER zz_collections_drop_vector_index ON collections;
DROP FUNCTION drop_vector_indexes();
DROP FUNCTION vector_index_ddl(bigint, boolean, text, integer, integer);
DROP FUNCTION vector_index_name(bigint, integer);
DROP FUNCTION other_vector_column(text);
ALTER TABLE collections DROP CONSTRAINT collections_next_check, DROP COLUMN next_dim,
    DROP COLUMN next_model, DROP COLUMN vectors_version, DROP COLUMN vector_column;
ALTER TABLE chunks DROP COLUMN embedding_alt,
    ALTER COLUMN embedding TYPE vector({dim}), ALTER COLUMN embedding SET NOT NULL;
ALTER TABLE chunks ALTER COLUMN embedding SET STORAGE MAIN;
UPDATE embedding_cache SET model = regexp_replace(model, '@[0-9]+$', '');

CREATE FUNCTION vector_index_name(collection bigint) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT 'chunks_embedding_' || collection $$;

CREATE FUNCTION vector_index_ddl(collection bigint, online boolean) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT format('CREATE INDEX %s IF NOT EXISTS %I ON chunks '
                    'USING hnsw (embedding vector_cosine_ops) '
                    'WITH (m = 16, ef_construction = 64) WHERE collection_id = %s',
                    CASE WHEN online THEN 'CONCURRENTLY' ELSE '' END,
                    vector_index_name(collection), collection) $$;

CREATE FUNCTION drop_vector_index() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP INDEX IF EXISTS %I', vector_index_name(OLD.id));
    RETURN NULL;
END $$;

CREATE TRIGGER zz_collections_drop_vector_index AFTER DELETE ON collections
    FOR EACH ROW EXECUTE FUNCTION drop_vector_index();

DO $$
DECLARE
    collection bigint;
BEGIN
    FOR collection IN SELECT id FROM collections ORDER BY id LOOP
        EXECUTE vector_index_ddl(collection, false);
    END LOOP;
END $$;
"""
    ).replace("{dim}", str(dim))


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    configured = context.config.attributes.get("embedding_dim")
    dim = int(configured or load_settings().embedding.dimension)
    op.execute(downgrade_sql(dim))
