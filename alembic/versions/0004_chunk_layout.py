"""Cheaper search reads: chunk rows keep their tsvector and embedding, and the row-level
security policy no longer steers the planner to the ACL index.

A search reads a chunk's tsvector (BM25) or embedding (exact distance, the HNSW heap check)
for every candidate. By default PostgreSQL moves values out of rows over 2 kB into the TOAST
table, and a chunk row (embedding, tsvector and text) is about 3.5 kB, so each candidate cost
extra TOAST index lookups. Rows up to 4 kB now stay whole, and when a row is longer the text
(read only for the hits shown) leaves the row first. Rows written before this revision keep
their layout until they are rewritten (re-ingest, or `VACUUM FULL chunks`).

The policy on `documents` compared each row's ACL with `current_principals()`: an indexable
clause, so the planner sometimes answered a primary-key lookup by scanning the ACL index for
every document the caller may see. Written as `(...) IS TRUE` (the same rows pass: the ACL is
never null) the policy is checked on the rows found, and only the search's own ACL predicate
can pick that index.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE chunks SET (toast_tuple_target = 4080), "
        "ALTER COLUMN embedding SET STORAGE MAIN, ALTER COLUMN tsv SET STORAGE MAIN"
    )
    op.execute(
        "ALTER POLICY documents_visible ON documents "
        "USING (deleted_at IS NULL AND (acl && current_principals()) IS TRUE)"
    )


def downgrade() -> None:
    op.execute(
        "ALTER POLICY documents_visible ON documents "
        "USING (deleted_at IS NULL AND acl && current_principals())"
    )
    op.execute(
        "ALTER TABLE chunks RESET (toast_tuple_target), "
        "ALTER COLUMN embedding SET STORAGE EXTERNAL, ALTER COLUMN tsv SET STORAGE EXTENDED"
    )
