"""The change log wakes its followers and can be read by transaction.

The in-process vector cache follows the change log. Its position is a transaction snapshot
(`pg_snapshot`), not a sequence number: sequence numbers are taken before commit, so a slow
writer can commit a lower number after a higher one was read, and a position by number would
skip it. A row is applied exactly when its writing transaction is visible in the position's
snapshot, and the rows not yet applied are found through `(collection_id, xid)`.

Every statement that appends to the log notifies the channel `hybrid_change_log` with the
collections it touched (delivered at commit, never for a rolled-back write).

Revision ID: 0007
Revises: 0005
Create Date: 2026-11-21
"""

from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE INDEX change_log_xid_idx ON change_log (collection_id, xid);

CREATE FUNCTION change_log_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('hybrid_change_log', string_agg(DISTINCT collection_id::text, ','))
    FROM appended
    HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE TRIGGER change_log_notify AFTER INSERT ON change_log
REFERENCING NEW TABLE AS appended
FOR EACH STATEMENT EXECUTE FUNCTION change_log_notify();
"""

DOWNGRADE = """
DROP TRIGGER IF EXISTS change_log_notify ON change_log;
DROP FUNCTION IF EXISTS change_log_notify();
DROP INDEX IF EXISTS change_log_xid_idx;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
