"""Cheaper search reads: chunk rows keep their tsvector and embedding, and metadata equality
filters can use the metadata index under row-level security.

A search reads a chunk's tsvector (BM25) or embedding (exact distance, the HNSW heap check)
for every candidate. By default PostgreSQL moves values out of rows over 2 kB into the TOAST
table, and a chunk row (embedding, tsvector and text) is about 3.5 kB, so each candidate cost
extra TOAST index lookups. Rows up to 4 kB now stay whole, and when a row is longer the text
(read only for the hits shown) leaves the row first. Rows written before this revision keep
their layout until they are rewritten (re-ingest, or `VACUUM FULL chunks`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


# Under row-level security only leakproof operators may use an index, and jsonb containment is
# not one: metadata equality filters find their documents through this function, which runs as
# the table owner and returns ids only (the search still checks each document's ACL, deletion
# and the exact condition under the policy).
DOCUMENTS_CONTAINING = """
CREATE FUNCTION documents_containing(collection bigint, containment jsonb) RETURNS SETOF bigint
LANGUAGE sql STABLE SECURITY DEFINER ROWS 100
SET search_path FROM CURRENT
AS $$ SELECT id FROM documents WHERE collection_id = collection AND metadata @> containment $$
"""


def upgrade() -> None:
    op.execute(
        "ALTER TABLE chunks SET (toast_tuple_target = 4080), "
        "ALTER COLUMN embedding SET STORAGE MAIN, ALTER COLUMN tsv SET STORAGE MAIN"
    )
    op.execute(DOCUMENTS_CONTAINING)
    op.execute("GRANT EXECUTE ON FUNCTION documents_containing(bigint, jsonb) TO hybrid_reader")


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS documents_containing(bigint, jsonb)")
    op.execute(
        "ALTER TABLE chunks RESET (toast_tuple_target), "
        "ALTER COLUMN embedding SET STORAGE EXTERNAL, ALTER COLUMN tsv SET STORAGE EXTENDED"
    )
