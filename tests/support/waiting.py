"""One way for a test to wait for something that happens in another task or process."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    timeout: float = 30,
    every_s: float = 0.05,
    *,
    what: str | Callable[[], str] | None = None,
) -> T:
    """Call `check` (sync or async) every `every_s` until it returns something truthy, and
    return that; AssertionError naming `what` (or the check's source) after `timeout` s."""
    result: T | None = None
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            while True:
                answer = check()
                result = await answer if inspect.isawaitable(answer) else answer
                if result:
                    return result
                await asyncio.sleep(every_s)
    except TimeoutError:
        if not deadline.expired():
            raise  # the check's own timeout, not ours
        described = what() if callable(what) else what or _source_of(check)
        raise AssertionError(
            f"waited {timeout} s for {described}; the last check gave {result!r}"
        ) from None


def _source_of(check: Callable[..., object]) -> str:
    """The check's source line (a lambda's body), else its name."""
    try:
        return inspect.getsource(check).strip()
    except (OSError, TypeError):
        return getattr(check, "__qualname__", repr(check))
