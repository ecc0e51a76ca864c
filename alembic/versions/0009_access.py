"""API keys and the audit log.

A key is stored by a short public prefix (shown in lists and logs, and the `kid` of its tenant
tokens), the SHA-256 digest of its secret and the key its tenant tokens are signed with
(derived from the secret), never the secret itself. The secret is a high-entropy random
token, so a plain digest is enough: there is nothing to guess that a slow hash would protect.
A key acts as its principals, within its scopes, optionally only in the listed collections
and under a mandatory filter (the JSON filter language of searches).

The audit log records security-relevant actions; denied requests are counted per key and
minute in one row each rather than one row per request.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE api_keys (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                   text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    prefix                 text NOT NULL UNIQUE CHECK (prefix ~ '^[0-9a-f]{12}$'),
    secret_hash            bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
    token_key              bytea NOT NULL CHECK (octet_length(token_key) = 32),
    principals             text[] NOT NULL DEFAULT '{}',
    scopes                 text[] NOT NULL CHECK (
        cardinality(scopes) > 0 AND scopes <@ ARRAY['search', 'ingest', 'admin', 'act-as']
    ),
    -- NULL: every collection.
    collections            text[],
    -- ANDed into every search, answer and document read made with the key; NULL: none.
    filter                 jsonb CHECK (filter IS NULL OR jsonb_typeof(filter) = 'object'),
    -- Requests a minute, and answers a minute; NULL: no limit.
    rate_per_minute        integer CHECK (rate_per_minute > 0),
    answer_rate_per_minute integer CHECK (answer_rate_per_minute > 0),
    description            text NOT NULL DEFAULT '',
    created_at             timestamptz NOT NULL DEFAULT now(),
    last_used_at           timestamptz,
    expires_at             timestamptz,
    revoked_at             timestamptz
);
-- A name is one key's until that key is revoked; `hybrid keys revoke NAME` finds it.
CREATE UNIQUE INDEX api_keys_active_name_idx ON api_keys (name) WHERE revoked_at IS NULL;

CREATE TABLE audit_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    action     text NOT NULL,
    -- The key that acted (NULL: the command line, or a credential that named no known key).
    key_id     bigint REFERENCES api_keys (id),
    target     text,
    detail     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(detail) = 'object'),
    -- Events this row stands for: 1, or the denied requests of one key, reason and minute.
    count      integer NOT NULL DEFAULT 1 CHECK (count > 0)
);
CREATE INDEX audit_log_at_idx ON audit_log (at);
CREATE INDEX audit_log_key_idx ON audit_log (key_id, action, at);
"""

DOWNGRADE = """
DROP TABLE IF EXISTS audit_log;
DROP TABLE IF EXISTS api_keys;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
