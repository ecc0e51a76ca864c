"""The local admin key of a service on this machine, so that the quick start needs no set-up.

`hybrid serve` on a loopback address, with authentication on, makes sure such a key exists:
its secret is kept in a file of the data directory that only its owner may read
(`admin.key`), and printed at every start with the line that puts it in `HYBRID_KEY`. A key
whose file was lost is revoked and replaced. A server bound to another address makes no
key: create them with `hybrid keys create`.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from sqlalchemy import Connection

from app.access import keys
from app.access.cache import Connect
from app.access.caller import ACT_AS, ADMIN, INGEST, SEARCH
from app.access.keys import KeySpec

NAME = "local-admin"
FILE = "admin.key"
SPEC = KeySpec(
    name=NAME,
    scopes=(ADMIN, INGEST, SEARCH, ACT_AS),
    description="made by `hybrid serve` on loopback; its secret is in the data directory",
)


def admin_secret(data_dir: Path, connect: Connect) -> str:
    """The secret of the usable local admin key, made (again) if needed."""
    path = data_dir / FILE
    kept = path.read_text().strip() if path.exists() else None
    with connect() as conn:
        if kept is not None and _usable(conn, kept):
            return kept
        if any(k.name == NAME and k.state() == "active" for k in keys.list_all(conn)):
            keys.revoke(conn, NAME)
        secret = keys.create(conn, SPEC).secret
    _write_private(path, secret)
    return secret


def _usable(conn: Connection, secret: str) -> bool:
    prefix = keys.prefix_of(secret)
    stored = keys.find(conn, prefix) if prefix else None
    if stored is None or stored.state() != "active":
        return False
    return hmac.compare_digest(keys.digest(secret), stored.secret_hash)


def _write_private(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
