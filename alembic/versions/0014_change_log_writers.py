"""Writers of the change log announce themselves, per collection.

The search result cache stores a result only when no write to its collection is in flight: a
log position (`seq`) is taken before commit, so a slow writer could still commit a position
lower than one a search has already read. It used to tell by looking for any other client
session holding a transaction id, which the query log's writer, the job queue and any other
writer in the database also do: under steady traffic results were rarely stored.

Now every change-log row is inserted under a shared transaction-level advisory lock on
(`CHANGE_LOG_LOCK_CLASS`, collection id), taken by a row trigger *before* the row's position
is drawn (the trigger draws it), and held until the writing transaction ends. A search that
finds no other holder of its collection's lock after it ran, and no log row committed since
its snapshot, may store its result (sql/cache.sql).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# Must equal app.search.cache.CHANGE_LOG_LOCK_CLASS.
CHANGE_LOG_LOCK_CLASS = 1_406_000_002

UPGRADE = f"""
CREATE FUNCTION change_log_writer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(
        {CHANGE_LOG_LOCK_CLASS}, CAST(NEW.collection_id AS integer));
    -- The identity value was drawn before this trigger ran: draw the row's position again,
    -- now that the lock is held, so that no position is taken by an unannounced writer.
    NEW.seq := nextval(pg_get_serial_sequence('change_log', 'seq'));
    RETURN NEW;
END $$;

CREATE TRIGGER change_log_writer BEFORE INSERT ON change_log
    FOR EACH ROW EXECUTE FUNCTION change_log_writer();
"""

DOWNGRADE = """
DROP TRIGGER IF EXISTS change_log_writer ON change_log;
DROP FUNCTION IF EXISTS change_log_writer();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
