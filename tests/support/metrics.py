"""What this test process's Prometheus metrics say (the services of a `running_stack` run
in it and count into its registry)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import REGISTRY


def sample_total(name: str, where: Callable[[Mapping[str, str]], bool] = lambda _: True) -> float:
    """The sum of the samples named `name` whose labels pass `where`."""
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        for sample in metric.samples
        if sample.name == name and where(sample.labels)
    )
