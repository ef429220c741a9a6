"""Subject names: an id is a whole token or it is refused."""

from __future__ import annotations

import pytest

from contracts.subjects import generation_events, generation_events_any_project


@pytest.mark.parametrize("value", ["g\n", "g\r", "g.x", "g x", "g*", ""])
def test_an_id_that_is_not_one_whole_token_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="cannot be used in a subject"):
        generation_events("p1", value)
    with pytest.raises(ValueError, match="cannot be used in a subject"):
        generation_events_any_project(value)


def test_a_good_id_makes_its_subject() -> None:
    assert generation_events("p1", "g-1_A") == "kiln.events.p1.g-1_A"
