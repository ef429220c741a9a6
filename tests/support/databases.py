"""The read model's two databases under test: a SQLite file, and a PostgreSQL database of its
own per test when `KILN_TEST_POSTGRES_URL` names a server (the variant is skipped, saying
so, when it does not).

The storage suite asks for a database directly. The e2e, fault and browser suites get one
through the environment every stack is built from (`service_env`): a test there that runs
Kiln's services (it uses the `nats_server` fixture) runs once per database.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

POSTGRES_ENV = "KILN_TEST_POSTGRES_URL"
DATABASE_ENV = "KILN_TEST_DATABASE_URL"
"""Set for one test (by the `database` fixture): the database its services use instead of
their SQLite file."""
DATABASES = ("sqlite", "postgresql")
# The suites whose stacks run once per database.
BOTH_DATABASES_SUITES = frozenset({"e2e", "faults", "browser"})


async def _admin(base_url: str, statement: str) -> None:
    """Run one statement on the server of `base_url`, outside any transaction."""
    admin = create_async_engine(base_url, isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    try:
        async with admin.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await admin.dispose()


def _database_url(base_url: str, name: str) -> str:
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def postgres_database(base_url: str) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database next to `base_url`'s, dropped afterwards."""
    name = f"kiln_{uuid.uuid4().hex[:12]}"
    await _admin(base_url, f'CREATE DATABASE "{name}"')
    try:
        yield _database_url(base_url, name)
    finally:
        await _admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def postgres_database_sync(base_url: str) -> Iterator[str]:
    """`postgres_database` for a synchronous fixture: each statement in an event loop of its
    own, in a thread, so it works whether or not the test's loop is running."""
    name = f"kiln_{uuid.uuid4().hex[:12]}"

    def admin(statement: str) -> None:
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, _admin(base_url, statement)).result()

    admin(f'CREATE DATABASE "{name}"')
    try:
        yield _database_url(base_url, name)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
