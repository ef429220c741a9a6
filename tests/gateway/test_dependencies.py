"""The path id check: a Kiln id is the whole string, or there is no such resource."""

from __future__ import annotations

import pytest

from services.gateway.errors import NotFound
from services.gateway.routes.dependencies import checked_id


@pytest.mark.parametrize("value", ["g-1\n", "g-1\r\n", "g-1\x00", "g.1", "", "a" * 65])
def test_an_impossible_id_is_not_found(value: str) -> None:
    with pytest.raises(NotFound):
        checked_id(value)


def test_a_possible_id_is_returned_as_it_is() -> None:
    assert checked_id("3f1c2a8e-0000-4000-8000-000000000000") == (
        "3f1c2a8e-0000-4000-8000-000000000000"
    )
