"""Rows bound for SQLite ahead of their statement are what SQLAlchemy itself would bind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite

from services.storage.bulk import bind_row, sqlite_utc_text
from services.storage.models import UtcDateTime, events_table

DIALECT = sqlite.dialect()
_bind = UtcDateTime().dialect_impl(DIALECT).bind_processor(DIALECT)
assert _bind is not None
_sqlalchemy_bind = _bind

MOMENTS = [
    None,
    datetime(2026, 12, 2, 11, 23, 45, 123456, tzinfo=UTC),
    datetime(2026, 12, 2, 11, 23, 45, tzinfo=UTC),
    datetime(2026, 12, 2, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))),
    datetime(2026, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
    datetime(2026, 12, 2, 11, 23, 45, 7),
    datetime(999, 3, 4, 5, 6, 7, 8, tzinfo=UTC),
]


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_utc_timestamp_is_bound_as_sqlalchemy_binds_it(moment: datetime | None) -> None:
    assert sqlite_utc_text(moment) == _sqlalchemy_bind(moment)


def test_an_audit_row_binds_its_timestamp_as_sqlalchemy_does() -> None:
    at = datetime(2026, 12, 2, 12, 0, 1, 5, tzinfo=timezone(timedelta(hours=2)))
    row = {
        "stream_seq": 7,
        "generation_id": "g",
        "project_id": "p",
        "seq": 3,
        "type": "file.written",
        "at": at,
        "progress": 40,
        "body": {"path": "a.py"},
        "hash": "h",
    }
    bound = bind_row(DIALECT, events_table, row)
    assert isinstance(bound, tuple)
    assert bound[[c.name for c in events_table.columns].index("at")] == _sqlalchemy_bind(at)
