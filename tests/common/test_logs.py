"""A log line's message is filled from its fields; a bound logger adds its fields to
every line, the line's own winning."""

from __future__ import annotations

import logging

import pytest

from services.common.logs import get_logger


def test_a_bound_logger_fills_and_carries_its_fields_in_every_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = get_logger("tests.common.test_logs").bind(generation_id="g1", phase="api")
    with caplog.at_level(logging.INFO, logger="tests.common.test_logs"):
        log.info("Phase {phase} of generation {generation_id}: {outcome}", outcome="ok")
        log.warning("Phase {phase} again", phase="tests")

    first, second = caplog.records
    assert first.getMessage() == "Phase api of generation g1: ok"
    assert vars(first)["fields"] == {"generation_id": "g1", "phase": "api", "outcome": "ok"}
    assert second.getMessage() == "Phase tests again"
    assert vars(second)["fields"] == {"generation_id": "g1", "phase": "tests"}


def test_binding_leaves_the_logger_it_came_from_as_it_was(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = get_logger("tests.common.test_logs")
    log.bind(generation_id="g1")
    with caplog.at_level(logging.INFO, logger="tests.common.test_logs"):
        log.info("plain")
    assert vars(caplog.records[0])["fields"] == {}
