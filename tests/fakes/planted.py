"""A tiny real project with a planted bug, for the self-repair tests and bench B10.

The fake model writes `app/status.py` (its `created()` uses `HTTPStatus` without importing
it) in the api phase and `tests/test_status.py` in the tests phase; the sandbox runs those
tests, so `test_created` fails until a repair answer imports it.
"""

from __future__ import annotations

from tests.fakes import FakeLLMServer, Reply

BUGGY = '"""HTTP statuses."""\n\n\ndef created() -> int:\n    return HTTPStatus.CREATED\n\n\ndef ok() -> int:\n    return 200\n'
STILL_BUGGY = BUGGY.replace('"""HTTP statuses."""', '"""HTTP statuses (tried)."""')
STILL_BUGGY_2 = BUGGY.replace('"""HTTP statuses."""', '"""HTTP statuses (tried again)."""')
FIXED = '"""HTTP statuses."""\n\nfrom http import HTTPStatus\n\n\ndef created() -> int:\n    return HTTPStatus.CREATED\n\n\ndef ok() -> int:\n    return 200\n'
WORSE = '"""HTTP statuses."""\n\n\ndef created() -> int:\n    return missing()\n\n\ndef ok() -> int:\n    return missing()\n\n\ndef also() -> int:\n    return missing()\n'
TESTS = (
    '"""The statuses."""\n\nfrom app.status import created, ok\n\n\n'
    "def test_created() -> None:\n    assert created() == 201\n\n\n"
    "def test_ok() -> None:\n    assert ok() == 200\n"
)
STATUS = {"path": "app/status.py", "content": BUGGY}
TEST_FILE = {"path": "tests/test_status.py", "content": TESTS}


def planted(fake: FakeLLMServer, *repairs: Reply) -> FakeLLMServer:
    """The fake writes the buggy module and its tests; each repair answer in turn."""
    fake.on("api", Reply(extra=[STATUS]))
    fake.on("tests", Reply(extra=[TEST_FILE]))
    fake.on("repair", *repairs)
    return fake


def fixes_it() -> tuple[Reply, ...]:
    """The repair answers of a model that fixes the bug in round 1."""
    return (Reply(files=[{"path": "app/status.py", "content": FIXED}]),)


def never_fixes_it() -> tuple[Reply, ...]:
    """The repair answers of a model that changes the module each round but never fixes it."""
    return (
        Reply(files=[{"path": "app/status.py", "content": STILL_BUGGY}]),
        Reply(files=[{"path": "app/status.py", "content": STILL_BUGGY_2}]),
    )
