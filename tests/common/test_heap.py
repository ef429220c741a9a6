"""Long-lived objects are kept out of full collections, and frozen cycles still go."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from services.common.heap import LongLivedHeap


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    yield
    gc.unfreeze()


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_settling_freezes_at_most_once_an_interval() -> None:
    heap = LongLivedHeap(every_s=3600)
    heap.settle()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    _Node()
    heap.settle()  # within the interval: nothing more is frozen
    assert heap.freezes == 1
    assert gc.get_freeze_count() == frozen


def test_a_frozen_cycle_is_collected_by_the_periodic_full_collection() -> None:
    heap = LongLivedHeap(every_s=0, full_every_s=0)
    node = _Node()
    alive = weakref.ref(node)
    heap.settle()
    del node
    gc.collect()
    assert alive() is not None, "frozen: full collections leave it alone"
    assert heap.collect_frozen()
    assert alive() is None


def test_the_full_collection_waits_for_its_period() -> None:
    assert not LongLivedHeap(full_every_s=3600).collect_frozen()
