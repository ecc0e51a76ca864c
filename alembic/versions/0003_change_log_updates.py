"""The change log also records document field updates (metadata, ACL, dates, popularity).

Such an update changes what a search returns (filters, ACL, boosts) without touching chunks.
Logging it with `op = 'U'`, one row per chunk of the document, makes the collection's latest
change-log position advance on every write that can change a search result, which is what
keys the in-process result cache. The reader role may read that position too, so a search
transaction that already switched roles can still check it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE change_log DROP CONSTRAINT change_log_op_check;
ALTER TABLE change_log ADD CONSTRAINT change_log_op_check CHECK (op IN ('I', 'D', 'U'));
GRANT SELECT ON change_log TO hybrid_reader;
"""

DOWNGRADE = """
REVOKE SELECT ON change_log FROM hybrid_reader;
DELETE FROM change_log WHERE op = 'U';
ALTER TABLE change_log DROP CONSTRAINT change_log_op_check;
ALTER TABLE change_log ADD CONSTRAINT change_log_op_check CHECK (op IN ('I', 'D'));
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
