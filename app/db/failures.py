"""What a database failure means for the caller, decided in one place.

PostgreSQL reports why a statement failed with a SQLSTATE; the API must not call every failure
"the database cannot be reached". A transaction that failed was rolled back whole, so each
answer here can say truthfully that nothing of the request was written, and whether sending it
again may succeed.
"""

from __future__ import annotations

from psycopg import errors as pg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.errors import Busy, Conflict, HybridError, Invalid, TooLarge, Unavailable

NOTHING_WRITTEN = "nothing of this request was written"

# The unique index that allows one unfinished re-embedding per collection (revision 0013).
ONE_REEMBED = "jobs_one_reembed_idx"


def translate(exc: BaseException) -> HybridError | None:
    """The service error that `exc` (a database failure) stands for, or None if it is not
    one this module knows."""
    if isinstance(exc, PoolTimeout):
        return Busy(
            "every database connection is in use; send the request again shortly",
            retry_after=1,
        )
    if not isinstance(exc, DBAPIError):
        return None
    known = _by_state(exc.orig)
    if known is not None:
        return known
    if not isinstance(exc.orig, pg.OperationalError):
        return None
    state = exc.orig.sqlstate
    if exc.connection_invalidated or state is None or state.startswith(("08", "57P")):
        return Unavailable("the database cannot be reached right now", retry_after=5)
    return Unavailable(
        f"the database could not complete this request (SQLSTATE {state})", retry_after=5
    )


def _by_state(orig: BaseException | None) -> HybridError | None:
    if isinstance(orig, pg.LockNotAvailable):
        return Busy(
            f"another request holds a lock on the same data (waited HYBRID_DB_LOCK_TIMEOUT); "
            f"{NOTHING_WRITTEN}, send it again",
            retry_after=1,
        )
    if isinstance(orig, (pg.DeadlockDetected, pg.SerializationFailure)):
        return Busy(
            f"a concurrent write to the same data won; {NOTHING_WRITTEN}, send it again",
            retry_after=1,
        )
    if isinstance(orig, pg.QueryCanceled):
        return Busy(
            f"the request ran past HYBRID_DB_STATEMENT_TIMEOUT; {NOTHING_WRITTEN}",
            retry_after=5,
        )
    if isinstance(orig, pg.ForeignKeyViolation):
        return Conflict(
            f"the collection was deleted while this request ran; {NOTHING_WRITTEN}",
            field="collection",
        )
    if isinstance(orig, pg.UniqueViolation):
        if orig.diag.constraint_name == ONE_REEMBED:
            return Conflict(
                "the collection has a re-embedding queued or running already; one at a time "
                "(cancel it, or wait for it to finish)",
                field="collection",
            )
        return Conflict(f"a concurrent request created the same item; {NOTHING_WRITTEN}")
    if isinstance(orig, pg.ProgramLimitExceeded):
        return TooLarge(f"a value is too large for the database to index; {NOTHING_WRITTEN}")
    if isinstance(orig, pg.DataError):
        return Invalid(f"a value cannot be stored: {orig.diag.message_primary or 'invalid'}")
    return None
