"""Garbage-collector settings for long-running services."""

from __future__ import annotations

import gc

BATCH_YOUNG_THRESHOLD = 20_000
"""Allocations between young collections for a service that works in large batches: the
default (700) runs dozens of collections over each batch's short-lived objects."""


def freeze_startup_heap(young_threshold: int | None = None) -> None:
    """Move what start-up allocated (modules, engines, connections) out of the collector's
    full passes, which would otherwise walk it again and again; optionally collect young
    objects less often."""
    gc.collect()
    gc.freeze()
    if young_threshold is not None:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_threshold, middle, old)
