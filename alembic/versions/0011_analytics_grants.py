"""Analytics: one thumb per answer, views added later readable by the analyst, and the
partition functions callable only by their owner.

- `analytics.answers_daily` counts an answer's last thumb only (sql/analytics.sql, run again).
- Views created in the schema `analytics` from now on are readable by `hybrid_analyst` without
  a grant of their own.
- `query_log_add_partitions` and `query_log_drop_before` create and drop tables: no one but
  their owner (the service's role, which runs them) may call them.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from pathlib import Path

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER DEFAULT PRIVILEGES IN SCHEMA analytics GRANT SELECT ON TABLES TO hybrid_analyst;
REVOKE EXECUTE ON FUNCTION query_log_add_partitions(date, date) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION query_log_drop_before(date) FROM PUBLIC;
"""

DOWNGRADE = """
GRANT EXECUTE ON FUNCTION query_log_drop_before(date) TO PUBLIC;
GRANT EXECUTE ON FUNCTION query_log_add_partitions(date, date) TO PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA analytics REVOKE SELECT ON TABLES FROM hybrid_analyst;
"""


def upgrade() -> None:
    op.execute((Path(__file__).resolve().parents[2] / "sql" / "analytics.sql").read_text())
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
