"""A client of a 3-node nats-server cluster with Kiln's streams at 3 replicas."""

from __future__ import annotations

import nats
from nats.aio.client import Client

from services.common.broker import ensure_streams_when_ready
from services.common.embedded_nats import NatsCluster

__all__ = ["NatsCluster", "connect_cluster"]


async def connect_cluster(cluster: NatsCluster) -> Client:
    """A client of every node, once the streams exist at one replica per node."""
    nc = await nats.connect(servers=cluster.url.split(","))
    try:
        await ensure_streams_when_ready(nc.jetstream(timeout=10), replicas=len(cluster.nodes))
    except BaseException:
        await nc.close()
        raise
    return nc
