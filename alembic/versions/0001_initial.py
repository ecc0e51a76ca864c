"""Initial schema: collections, documents, sections, chunks, change log, embedding cache.

Every table carries `collection_id`, the natural distribution column if the database is ever
spread with Citus, and every key starts with it. The embedding column's dimension comes from
HYBRID_EMBEDDING_DIM at the time the schema is created; start-up refuses a setting that no
longer matches it.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from alembic import context, op

from app.settings import load_settings

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _embedding_dim() -> int:
    configured = context.config.attributes.get("embedding_dim")
    return int(configured or load_settings().embedding.dimension)


UPGRADE = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS unaccent;

-- A namespace per corpus or tenant, with the model its vectors come from.
CREATE TABLE collections (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    description     text NOT NULL DEFAULT '',
    embedding_model text NOT NULL,
    embedding_dim   integer NOT NULL CHECK (embedding_dim > 0),
    text_config     regconfig NOT NULL DEFAULT 'english',
    settings        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per logical document; a re-ingest bumps `version` and replaces the chunks.
CREATE TABLE documents (
    collection_id bigint NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    id            bigint GENERATED ALWAYS AS IDENTITY,
    external_id   text NOT NULL,
    title         text NOT NULL DEFAULT '',
    source        text,
    content_hash  text NOT NULL,
    version       integer NOT NULL DEFAULT 1,
    metadata      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    acl           text[] NOT NULL DEFAULT '{*}',
    popularity    double precision NOT NULL DEFAULT 0,
    chunk_count   integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    deleted_at    timestamptz,
    PRIMARY KEY (collection_id, id),
    UNIQUE (collection_id, external_id)
);
-- Metadata filters use containment (@>), ACL checks use overlap (&&).
CREATE INDEX documents_metadata_idx ON documents USING gin (metadata jsonb_path_ops);
CREATE INDEX documents_acl_idx ON documents USING gin (acl);
-- Recency ordering and boosts read live documents by date.
CREATE INDEX documents_published_idx ON documents (collection_id, published_at DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX documents_updated_idx ON documents (collection_id, updated_at DESC)
    WHERE deleted_at IS NULL;
-- Purge finds soft-deleted documents without scanning live ones.
CREATE INDEX documents_deleted_idx ON documents (collection_id, deleted_at)
    WHERE deleted_at IS NOT NULL;

-- The parent context of chunks: consecutive text under one heading path.
CREATE TABLE sections (
    collection_id bigint NOT NULL,
    document_id   bigint NOT NULL,
    ordinal       integer NOT NULL,
    heading_path  text[] NOT NULL DEFAULT '{}',
    text          text NOT NULL,
    PRIMARY KEY (collection_id, document_id, ordinal),
    FOREIGN KEY (collection_id, document_id)
        REFERENCES documents (collection_id, id) ON DELETE CASCADE
);

-- The unit of retrieval. `context` (title and headings) is indexed with weight A next to the
-- body, so a query that names the title matches every chunk of the document.
CREATE TABLE chunks (
    collection_id   bigint NOT NULL,
    id              bigint GENERATED ALWAYS AS IDENTITY,
    document_id     bigint NOT NULL,
    ordinal         integer NOT NULL,
    section_ordinal integer NOT NULL,
    heading_path    text[] NOT NULL DEFAULT '{}',
    context         text NOT NULL DEFAULT '',
    text            text NOT NULL,
    token_count     integer NOT NULL,
    text_config     regconfig NOT NULL,
    tsv             tsvector GENERATED ALWAYS AS (
                        setweight(to_tsvector(text_config, context), 'A')
                        || to_tsvector(text_config, text)
                    ) STORED,
    embedding       vector({dim}) NOT NULL,
    PRIMARY KEY (collection_id, id),
    UNIQUE (collection_id, document_id, ordinal),
    FOREIGN KEY (collection_id, document_id)
        REFERENCES documents (collection_id, id) ON DELETE CASCADE,
    FOREIGN KEY (collection_id, document_id, section_ordinal)
        REFERENCES sections (collection_id, document_id, ordinal) ON DELETE CASCADE
);
CREATE INDEX chunks_tsv_idx ON chunks USING gin (tsv);
CREATE INDEX chunks_embedding_idx ON chunks USING hnsw (embedding vector_cosine_ops)
    WITH (m = 16, ef_construction = 64);

-- Every chunk insert and delete, in commit order per transaction id, so that an in-process
-- index can catch up exactly: a reader only trusts rows below pg_snapshot_xmin.
CREATE TABLE change_log (
    collection_id bigint NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    seq           bigint GENERATED ALWAYS AS IDENTITY,
    chunk_id      bigint NOT NULL,
    op            char(1) NOT NULL CHECK (op IN ('I', 'D')),
    xid           xid8 NOT NULL DEFAULT pg_current_xact_id(),
    changed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection_id, seq)
);

-- Vectors by (model, SHA-256 of the embedded text): re-ingests and shared passages skip the model.
CREATE TABLE embedding_cache (
    model      text NOT NULL,
    text_hash  bytea NOT NULL,
    embedding  vector NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, text_hash)
);
"""

DOWNGRADE = """
DROP TABLE IF EXISTS embedding_cache;
DROP TABLE IF EXISTS change_log;
DROP TABLE IF EXISTS chunks;
DROP TABLE IF EXISTS sections;
DROP TABLE IF EXISTS documents;
DROP TABLE IF EXISTS collections;
"""


def upgrade() -> None:
    op.execute(UPGRADE.replace("{dim}", str(_embedding_dim())))


def downgrade() -> None:
    op.execute(DOWNGRADE)
