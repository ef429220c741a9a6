"""Which database errors are an event's fault (dead-letter it) and which are the database's
(retry the batch), and their short descriptions."""

from __future__ import annotations

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError


def is_refused(exc: BaseException) -> bool:
    """True when the database refused what one event holds (a number out of range, a NUL
    in a text, a constraint): no retry can fix that, so the event alone is dead-lettered.

    Anything else (the database unreachable or locked, a missing table, a bug) fails the
    whole batch, which is retried: the projector waits rather than drop events.
    """
    if isinstance(exc, IntegrityError | DataError | OverflowError):
        return True
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        # PostgreSQL's SQLSTATE classes 22 (data exception) and 23 (integrity violation).
        code = str(getattr(exc.orig, "pgcode", None) or getattr(exc.orig, "sqlstate", None) or "")
        return code[:2] in ("22", "23")
    return False


def describe_error(exc: BaseException) -> str:
    """A short description of a database error (the driver's message, not the SQL)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
