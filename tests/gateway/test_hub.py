"""A generation's shared log wakes each of its watchers through a future of its own."""

from __future__ import annotations

import asyncio

from services.gateway.hub import GenerationLog, sse_chunk


def _block(seq: int) -> tuple[str, bytes]:
    block = sse_chunk(seq, b'{"type": "phase.progress", "seq": %d}' % seq)
    assert block is not None
    return block


async def test_every_waiting_watcher_wakes_when_the_log_grows() -> None:
    log = GenerationLog("g1")
    log.replay_done()
    waiters = [log.next_change() for _ in range(3)]
    assert not any(w.done() for w in waiters)
    log.offer_live(5, *_block(5))
    assert all(w.done() for w in waiters)
    assert log.seqs == [5]


async def test_a_watcher_cancelling_its_wait_leaves_the_others_waiting() -> None:
    log = GenerationLog("g1")
    gone, staying = log.next_change(), log.next_change()
    gone.cancel()
    log.replay_done()
    assert staying.done() and staying.result() is None


async def test_a_wait_started_after_a_change_waits_for_the_next_one() -> None:
    log = GenerationLog("g1")
    log.replay_done()
    later = log.next_change()
    await asyncio.sleep(0)
    assert not later.done()
    log.replay_failed(RuntimeError("gateway stopping"))
    assert later.done()
