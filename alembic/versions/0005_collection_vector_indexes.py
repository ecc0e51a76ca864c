"""One HNSW index per collection, so that a bulk load can build its collection's index once.

Inserting a vector into an HNSW graph is a search of the graph (ef_construction = 64) per
row; building the graph from a loaded table costs about half. With one index over
every collection, a load could not drop and rebuild it without taking vector search away
from all the others. Partial indexes (`WHERE collection_id = <id>`) give each collection its
own graph: a load into a collection that has none writes its chunks first and builds the
index after (see app/ingest/vector_index.py), while every other collection keeps its index.
Searches bind the collection id and are always planned for the actual value, so the planner
matches the predicate and uses the collection's index.

`vector_index_ddl()` is the one definition of the index: the write path runs what it returns
(`CREATE INDEX CONCURRENTLY`, outside a transaction), this migration the plain form. Deleting
a collection drops its index.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = """
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

-- Named to fire after the foreign keys' cascades (triggers fire in name order), once the
-- collection's chunks are gone.
CREATE TRIGGER zz_collections_drop_vector_index AFTER DELETE ON collections
    FOR EACH ROW EXECUTE FUNCTION drop_vector_index();

DROP INDEX chunks_embedding_idx;
DO $$
DECLARE
    collection bigint;
BEGIN
    FOR collection IN SELECT id FROM collections ORDER BY id LOOP
        EXECUTE vector_index_ddl(collection, false);
    END LOOP;
END $$;
"""

DOWNGRADE = """
DROP TRIGGER IF EXISTS zz_collections_drop_vector_index ON collections;
DROP FUNCTION IF EXISTS drop_vector_index();
DO $$
DECLARE
    index_name text;
BEGIN
    FOR index_name IN
        SELECT indexname FROM pg_indexes
        WHERE tablename = 'chunks' AND indexname ~ '^chunks_embedding_[0-9]+$'
    LOOP
        EXECUTE format('DROP INDEX %I', index_name);
    END LOOP;
END $$;
DROP FUNCTION IF EXISTS vector_index_ddl(bigint, boolean);
DROP FUNCTION IF EXISTS vector_index_name(bigint);
CREATE INDEX chunks_embedding_idx ON chunks USING hnsw (embedding vector_cosine_ops)
    WITH (m = 16, ef_construction = 64);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
