-- API keys and the audit log: create, list, look up, mark used and revoke keys; record actions.

-- name: create_key
-- The secret itself is never stored: only its SHA-256 digest and the tenant-token signing key
-- derived from it.
INSERT INTO api_keys (name, prefix, secret_hash, token_key, principals, scopes, collections,
                      filter, rate_per_minute, answer_rate_per_minute, description, expires_at)
VALUES (:name, :prefix, :secret_hash, :token_key, CAST(:principals AS text[]),
        CAST(:scopes AS text[]), CAST(:collections AS text[]), CAST(:filter AS jsonb),
        :rate_per_minute, :answer_rate_per_minute, :description, :expires_at)
ON CONFLICT (name) WHERE revoked_at IS NULL DO NOTHING
RETURNING id, name, prefix, principals, scopes, collections, filter, rate_per_minute,
          answer_rate_per_minute, description, created_at, last_used_at, expires_at, revoked_at;

-- name: list_keys
-- What lists show: never the digest or the signing key.
SELECT id, name, prefix, principals, scopes, collections, filter, rate_per_minute,
       answer_rate_per_minute, description, created_at, last_used_at, expires_at, revoked_at
FROM api_keys
ORDER BY created_at, id;

-- name: find_key
-- The one read of an authentication (through the in-process cache): a key by its prefix.
SELECT id, name, prefix, principals, scopes, collections, filter, rate_per_minute,
       answer_rate_per_minute, description, created_at, last_used_at, expires_at, revoked_at,
       secret_hash, token_key
FROM api_keys
WHERE prefix = :prefix;

-- name: lock_key_to_revoke
-- By prefix, or by the name of a key not yet revoked; a prefix wins, since a name is free
-- text that could look like another key's prefix.
SELECT id, name, prefix, principals, scopes, collections, filter, rate_per_minute,
       answer_rate_per_minute, description, created_at, last_used_at, expires_at, revoked_at
FROM api_keys
WHERE prefix = :ident OR (name = :ident AND revoked_at IS NULL)
ORDER BY prefix = :ident DESC
LIMIT 1
FOR UPDATE;

-- name: revoke_key
UPDATE api_keys
SET revoked_at = now()
WHERE id = :id
RETURNING id, name, prefix, principals, scopes, collections, filter, rate_per_minute,
          answer_rate_per_minute, description, created_at, last_used_at, expires_at, revoked_at;

-- name: touch_key
-- At most once a minute, and never waiting for a row another transaction holds (that one
-- is marking it, or revoking it).
UPDATE api_keys
SET last_used_at = now()
WHERE id = (
    SELECT id FROM api_keys
    WHERE id = :id
      AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
    FOR UPDATE SKIP LOCKED
);

-- name: record_action
INSERT INTO audit_log (action, key_id, target, detail)
VALUES (:action, :key_id, :target, CAST(:detail AS jsonb));

-- name: count_denied
-- One row per key (by the prefix the credential named: NULL when no key has it), reason and
-- minute, counting the requests denied. Two concurrent first denials of a minute may both
-- insert; the rows still add up.
WITH k AS (
    SELECT (SELECT id FROM api_keys WHERE prefix = :prefix) AS id
), latest AS (
    SELECT a.id
    FROM audit_log a, k
    WHERE a.action = 'request.denied'
      AND a.target = :reason
      AND a.at >= date_trunc('minute', now())
      AND (a.key_id = k.id OR (a.key_id IS NULL AND k.id IS NULL))
    ORDER BY a.id
    LIMIT 1
), bumped AS (
    UPDATE audit_log a
    SET count = a.count + 1
    FROM latest
    WHERE a.id = latest.id
    RETURNING a.id
)
INSERT INTO audit_log (action, key_id, target)
SELECT 'request.denied', k.id, :reason
FROM k
WHERE NOT EXISTS (SELECT FROM bumped);
