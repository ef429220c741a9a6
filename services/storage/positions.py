"""Where each storage consumer stands in the stream, and where a new one starts."""

from __future__ import annotations

import re

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.streams import STORAGE_CONSUMER
from services.storage.models import (
    positions_table,
)


async def read_position(conn: AsyncConnection, consumer: str) -> int | None:
    value = (
        await conn.execute(
            select(positions_table.c.stream_seq).where(positions_table.c.consumer == consumer)
        )
    ).scalar()
    return None if value is None else int(value)


async def write_position(conn: AsyncConnection, consumer: str, stream_seq: int) -> None:
    updated = await conn.execute(
        update(positions_table)
        .where(positions_table.c.consumer == consumer)
        .values(stream_seq=stream_seq)
    )
    if updated.rowcount == 0:
        await conn.execute(insert(positions_table).values(consumer=consumer, stream_seq=stream_seq))


class PositionMoved(RuntimeError):
    """The consumer's position is not where this projector left it (another process wrote
    it): the batch is rolled back and retried from the position read afresh."""


async def advance_position(
    conn: AsyncConnection, consumer: str, stream_seq: int, *, was: int
) -> None:
    """Move the consumer's position from `was` (where this projector's last commit left it)
    to `stream_seq`, in one statement; PositionMoved if it was not at `was`."""
    updated = await conn.execute(
        update(positions_table)
        .where(positions_table.c.consumer == consumer, positions_table.c.stream_seq == was)
        .values(stream_seq=stream_seq)
    )
    if updated.rowcount != 1:
        raise PositionMoved(f"the position of {consumer} is no longer stream seq {was}")


_PARTITION_CONSUMER = re.compile(rf"^{STORAGE_CONSUMER}-(\d+)-of-(\d+)$")


def covered_position(positions: dict[str, int]) -> int:
    """The highest stream sequence up to which some set of storage consumers (the single
    `storage`, or every `storage-<i>-of-<n>` of one n) has applied every event."""
    sets: dict[int, list[int]] = {}
    for name, seq in positions.items():
        if name == STORAGE_CONSUMER:
            sets[1] = [seq]
        elif match := _PARTITION_CONSUMER.match(name):
            partition, partitions = int(match[1]), int(match[2])
            if partition < partitions:
                sets.setdefault(partitions, [0] * partitions)[partition] = seq
    return max((min(seqs) for seqs in sets.values()), default=0)
