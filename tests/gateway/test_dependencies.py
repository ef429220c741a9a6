"""The id check: a Kiln id is the whole string, or the request is a 400 naming it."""

from __future__ import annotations

import pytest

from services.gateway.errors import BadRequest
from services.gateway.routes.dependencies import checked_id


@pytest.mark.parametrize("value", ["g-1\n", "g-1\r\n", "g-1\x00", "g.1", "", "a" * 65])
def test_an_impossible_id_is_a_bad_request_naming_it(value: str) -> None:
    with pytest.raises(BadRequest) as refused:
        checked_id(value)
    assert repr(value[:80]) in refused.value.detail


def test_a_possible_id_is_returned_as_it_is() -> None:
    assert checked_id("3f1c2a8e-0000-4000-8000-000000000000") == (
        "3f1c2a8e-0000-4000-8000-000000000000"
    )
