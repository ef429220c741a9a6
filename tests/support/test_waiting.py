"""`eventually`, the one way the suites wait: sync or async checks, the value returned, and a
timeout that says what it waited for."""

from __future__ import annotations

import pytest

from tests.support.waiting import eventually


async def test_a_sync_check_is_called_until_it_holds_and_its_value_returned() -> None:
    calls: list[int] = []

    def third_call() -> int | None:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else None

    assert await eventually(third_call, 5, 0) == 3


async def test_an_async_check_is_awaited() -> None:
    calls: list[int] = []

    async def second_call() -> bool:
        calls.append(1)
        return len(calls) >= 2

    assert await eventually(second_call, 5, 0) is True
    assert len(calls) == 2


async def test_a_timeout_names_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match="the moon to turn blue; the last check gave False"):
        await eventually(lambda: False, 0.05, 0.01, what="the moon to turn blue")
    with pytest.raises(AssertionError, match=r"lambda: 1 \+ 1 == 3"):
        await eventually(lambda: 1 + 1 == 3, 0.05, 0.01)


async def test_a_timeout_raised_by_the_check_itself_is_not_taken_for_ours() -> None:
    def times_out() -> bool:
        raise TimeoutError("the check's own")

    with pytest.raises(TimeoutError, match="the check's own"):
        await eventually(times_out, 5)
