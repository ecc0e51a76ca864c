"""The query log, feedback, and the analytics views over them.

Every search and answer is one row of `query_log` (written in batches, off the request path),
partitioned by UTC day: `query_log_add_partitions` creates the days ahead and
`query_log_drop_before` drops whole days past the retention (and the feedback of those days).
`feedback` holds clicks and ratings of logged searches and answers. The views of
`sql/analytics.sql` live in the schema `analytics`, which the role `hybrid_analyst` may read,
and nothing else: not the log itself, not documents, chunks or keys.

Principals are stored as a keyed hash (`query_log_salt`, never readable by analysts), so that
searches can be grouped by audience without naming anyone.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from pathlib import Path

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE query_log (
    id                uuid NOT NULL,
    logged_at         timestamptz NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('search', 'answer')),
    collection        text NOT NULL,
    mode              text,
    k                 integer,
    page_offset       integer,
    filter            jsonb,
    boosts            jsonb,
    key_id            bigint,
    key_prefix        text,
    principals_hash   text,
    -- The end user of a tenant token (its `sub`), as a keyed hash: feedback is theirs alone.
    subject_hash      text,
    query             text NOT NULL,
    embed_ms          real,
    sql_ms            real,
    faiss_ms          real,
    rerank_ms         real,
    generation_ms     real,
    total_ms          real NOT NULL,
    hits              integer NOT NULL DEFAULT 0,
    -- The returned chunks and their documents, best first (rank = position + page_offset).
    chunk_ids         bigint[] NOT NULL DEFAULT '{}',
    document_ids      text[] NOT NULL DEFAULT '{}',
    cache             text,
    vector_backend    text,
    status            integer NOT NULL,
    error             text,
    -- Answers only.
    model             text,
    fallback          boolean,
    extractive        boolean,
    prompt_tokens     integer,
    completion_tokens integer,
    cited_chunk_ids   bigint[],
    PRIMARY KEY (id, logged_at)
) PARTITION BY RANGE (logged_at);

CREATE TABLE query_log_salt (salt text NOT NULL);
INSERT INTO query_log_salt VALUES (gen_random_uuid()::text || gen_random_uuid()::text);

CREATE TABLE feedback (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    search_id   uuid NOT NULL,
    searched_at timestamptz NOT NULL,
    collection  text NOT NULL,
    kind        text NOT NULL
                CHECK (kind IN ('click', 'helpful', 'not_helpful', 'thumbs_up', 'thumbs_down')),
    chunk_id    bigint,
    document_id text,
    position    integer CHECK (position BETWEEN 1 AND 10000),
    comment     text CHECK (length(comment) <= 2000),
    key_id      bigint
);
CREATE INDEX feedback_search_idx ON feedback (search_id);
CREATE INDEX feedback_created_idx ON feedback (created_at);

-- The UTC days from `first_day` to `last_day` get their partitions (those missing); returns how
-- many were made. One caller at a time, so that instances starting together never collide.
CREATE FUNCTION query_log_add_partitions(first_day date, last_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day date;
    made integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('query_log_partitions'));
    FOR day IN SELECT CAST(d AS date) FROM generate_series(first_day, last_day, interval '1 day') d
    LOOP
        IF to_regclass('query_log_' || to_char(day, 'YYYYMMDD')) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF query_log FOR VALUES FROM (%L) TO (%L)',
                'query_log_' || to_char(day, 'YYYYMMDD'),
                CAST(day AS timestamp) AT TIME ZONE 'UTC',
                CAST(day + 1 AS timestamp) AT TIME ZONE 'UTC');
            made := made + 1;
        END IF;
    END LOOP;
    RETURN made;
END $$;

-- Drops the partitions of the UTC days before `cutoff` and the feedback given before it;
-- returns how many days were dropped.
CREATE FUNCTION query_log_drop_before(cutoff date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part text;
    dropped integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('query_log_partitions'));
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'query_log'::regclass AND c.relname ~ '^query_log_[0-9]{8}$'
          AND to_date(substr(c.relname, 11), 'YYYYMMDD') < cutoff
    LOOP
        EXECUTE format('DROP TABLE %I', part);
        dropped := dropped + 1;
    END LOOP;
    DELETE FROM feedback WHERE created_at < CAST(cutoff AS timestamp) AT TIME ZONE 'UTC';
    RETURN dropped;
END $$;

SELECT query_log_add_partitions(CAST(now() AT TIME ZONE 'UTC' AS date) - 1,
                                CAST(now() AT TIME ZONE 'UTC' AS date) + 7);

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hybrid_analyst') THEN
        CREATE ROLE hybrid_analyst NOLOGIN;
    END IF;
END $$;
CREATE SCHEMA analytics;
GRANT USAGE ON SCHEMA analytics TO hybrid_analyst;
"""

GRANTS = """
GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO hybrid_analyst;
"""

DOWNGRADE = """
DROP SCHEMA analytics CASCADE;
DROP FUNCTION query_log_drop_before(date);
DROP FUNCTION query_log_add_partitions(date, date);
DROP TABLE feedback;
DROP TABLE query_log_salt;
DROP TABLE query_log;
"""


def upgrade() -> None:
    op.execute(UPGRADE)
    # The views as sql/analytics.sql defines them at this revision (each `CREATE OR REPLACE`,
    # so a later revision that changes them runs the file again).
    op.execute((Path(__file__).resolve().parents[2] / "sql" / "analytics.sql").read_text())
    op.execute(GRANTS)


def downgrade() -> None:
    op.execute(DOWNGRADE)
