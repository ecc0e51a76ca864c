"""Background jobs: the queue (procrastinate's schema) and the jobs people watch.

- procrastinate's tables and functions (`procrastinate_*`), exactly as the pinned release ships
  them (`procrastinate/sql/schema.sql`). A later release brings its own migration files: a new
  revision here applies them.
- `jobs`: one row per ingest or delete-by-filter job, what was asked, its state and counters,
  updated in the same transactions as the documents it writes.
- `job_files`: the uploaded files a job reads, by content hash (the files themselves live in the
  upload folder, `HYBRID_UPLOADS_DIR`).
- `job_documents`: each document a job has written (or refused, with the reason): a resumed job
  skips them, and `GET /v1/jobs/{id}` lists the failures.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from importlib import resources

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('ingest', 'delete')),
    collection_id    bigint NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    state            text NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    -- What was asked: defaults (metadata, acl) for ingest, the filter for a delete.
    params           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(params) = 'object'),
    -- Input documents (distinct ids), once counted; NULL until the job has read its input.
    documents_total  integer,
    created          integer NOT NULL DEFAULT 0,
    updated          integer NOT NULL DEFAULT 0,
    metadata_updated integer NOT NULL DEFAULT 0,
    unchanged        integer NOT NULL DEFAULT 0,
    deleted          integer NOT NULL DEFAULT 0,
    failed           integer NOT NULL DEFAULT 0,
    chunks           integer NOT NULL DEFAULT 0,
    embedded         integer NOT NULL DEFAULT 0,
    attempts         integer NOT NULL DEFAULT 0,
    cancel_requested boolean NOT NULL DEFAULT false,
    error            text,
    -- The key that asked (NULL: the command line, or HYBRID_AUTH=off) and how it was named.
    key_id           bigint REFERENCES api_keys (id) ON DELETE SET NULL,
    requested_by     text NOT NULL,
    idempotency_key  text CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash     bytea,
    -- The queue's job (procrastinate_jobs.id) of the latest attempt.
    queue_job_id     bigint,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- When the current run started (a resumed job starts again), and when it ended.
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- Work done before the current run started (resumed jobs), for rate and ETA.
    done_before      integer NOT NULL DEFAULT 0
);
CREATE INDEX jobs_created_idx ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_collection_idx ON jobs (collection_id);
CREATE INDEX jobs_unfinished_idx ON jobs (state) WHERE state IN ('queued', 'running');
-- A client retry with the same Idempotency-Key finds the job its first try made.
CREATE UNIQUE INDEX jobs_idempotency_idx ON jobs (COALESCE(key_id, 0), idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE job_files (
    job_id   bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    position integer NOT NULL,
    sha256   text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    name     text NOT NULL,
    size     bigint NOT NULL,
    PRIMARY KEY (job_id, position)
);
CREATE INDEX job_files_sha256_idx ON job_files (sha256);

CREATE TABLE job_documents (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id       bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    -- NULL for a file that could not be read at all (`source` names it).
    external_id  text,
    source       text,
    status       text NOT NULL
                 CHECK (status IN ('created', 'updated', 'metadata_updated', 'unchanged',
                                   'failed')),
    chunks       integer NOT NULL DEFAULT 0,
    content_hash text,
    error        text
);
CREATE UNIQUE INDEX job_documents_id_idx ON job_documents (job_id, external_id)
    WHERE external_id IS NOT NULL;
CREATE UNIQUE INDEX job_documents_file_idx ON job_documents (job_id, source)
    WHERE external_id IS NULL;
"""

DOWNGRADE = """
DROP TABLE IF EXISTS job_documents;
DROP TABLE IF EXISTS job_files;
DROP TABLE IF EXISTS jobs;
DROP TABLE IF EXISTS procrastinate_events, procrastinate_periodic_defers, procrastinate_jobs,
    procrastinate_workers CASCADE;
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.proname LIKE 'procrastinate\\_%'
                AND p.pronamespace = current_schema()::regnamespace
    LOOP
        EXECUTE format('DROP FUNCTION %s CASCADE', fn);
    END LOOP;
END $$;
DROP TYPE IF EXISTS procrastinate_job_to_defer_v1, procrastinate_job_event_type,
    procrastinate_job_status;
"""


def upgrade() -> None:
    schema = (resources.files("procrastinate.sql") / "schema.sql").read_text(encoding="utf-8")
    # On the driver's connection (the same transaction): the file is SQL as written, with no
    # bind parameters to interpret.
    op.get_bind().connection.driver_connection.execute(schema)  # type: ignore[union-attr]
    op.execute(UPGRADE)


def downgrade() -> None:
    op.get_bind().connection.driver_connection.execute(DOWNGRADE)  # type: ignore[union-attr]
