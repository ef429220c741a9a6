"""One JetStream pull request per batch, its messages taken from the subscription's queue.

nats-py's `PullSubscription.fetch` awaits each message of a batch on its own
(`Subscription.next_msg`: a `uuid4`, a task and an `asyncio.wait_for` timer per message,
~7 % of the storage process's samples in py-spy, B5) and makes two requests when the
first finds nothing. `pull_batch` sends one request and waits once per burst of messages
instead: messages of the read loop's one socket read land in the queue together, and are
taken without waiting, under one deadline for the whole batch.

The request is `{"batch": n, "expires": t, "no_wait": true}`, a one-shot request to
nats-server: it delivers what is pending now, up to n, then ends the request with a
`404 No Messages` status when that is fewer than n; when nothing is pending it waits up to
t for the first messages and ends the same way (or with `408 Request Timeout` at t). A
full batch ends without a status. (tests/common/test_pull.py checks this on the server
Kiln runs.) So a batch is over at its n-th message, at a status, or at the deadline,
whichever comes first.

One exception to "one request": an atomic batch cut in two. nats-server stores a
committed atomic batch message by message, and a request it serves meanwhile can end
(`404`) after the batch's first messages; the rest, already committed, would then come
with the next batch, one more transaction for the projector after this one's (B6: the 38
events of a 1-entity generation reached storage in two or three batches in most runs).
The stored messages keep their `Nats-Batch-Id`, and the batch's last one its
`Nats-Batch-Commit`, so when a request ends on a message of an atomic batch without that
commit mark (a first delivery), `pull_batch` asks for the rest at once, waiting at most
REST_OF_BATCH_S for it. A message that is not the end of a cut batch never waits.

This relies on two private attributes of nats-py's pull subscription (its `Subscription`'s
`_pending_queue` and `_pending_size`, both used by nats-py's own `fetch`); nats-py is
pinned in constraints.txt, and tests/common/test_pull.py fails if they change.
"""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

STATUS = api.Header.STATUS
ENDS_REQUEST = frozenset({api.StatusCode.NO_MESSAGES, api.StatusCode.REQUEST_TIMEOUT})
"""Statuses with which the server ends a pull request normally (404, 408)."""
CONFLICT = api.StatusCode.CONFLICT
"""409: the request ended for a reason of the consumer's (a leadership change, the consumer
deleted, too many waiting requests); nats-py treats it as temporary too."""
HEARTBEAT = api.StatusCode.CONTROL_MESSAGE
DEADLINE_MARGIN_S = 0.1
"""How long past the request's `expires` the client still waits for the server's own end
(its 408), so that a request normally ends by the server's word, not by a timer, and no
late status of it is mistaken for the end of the next one."""
BATCH_ID = "Nats-Batch-Id"
BATCH_COMMIT = "Nats-Batch-Commit"
"""Headers nats-server keeps on the messages of an atomic batch (the commit: its last)."""
REST_OF_BATCH_S = 0.05
"""How long a request for the rest of a cut atomic batch waits for its first message (the
rest is committed: it normally comes within a millisecond)."""
EMPTY_PAUSE_S = 0.05
"""Pause after a request that the server ended early with nothing, so that a consumer in
that state (a 409, pull requests of another process pending) is not asked in a hot loop."""


async def pull_batch(
    sub: JetStreamContext.PullSubscription, batch: int, timeout_s: float
) -> list[Msg]:
    """Up to `batch` messages of a pull subscription, waiting at most about `timeout_s`
    for the first ones; [] when none came. The rest of an atomic batch the server was still
    storing when it ended the request is asked for at once (see the module's docstring).

    Raises what nats-py's `fetch` raises: `nats.errors.ConnectionClosedError` on a
    closed connection, `nats.js.errors.APIError` (its subclass for the code) for a status
    that is not the normal end of a request, such as a `503` when JetStream has no
    responder for the consumer.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    inner = sub._sub
    queue: asyncio.Queue[Msg] = inner._pending_queue
    msgs: list[Msg] = []
    # Messages a request before delivered after its caller stopped waiting (or statuses
    # meant for it): take the messages, drop the statuses, as nats-py's fetch does.
    while len(msgs) < batch and not queue.empty():
        msg = queue.get_nowait()
        inner._pending_size -= len(msg.data)
        if not (msg.headers and msg.headers.get(STATUS)):
            msgs.append(msg)
    if msgs:
        return msgs

    loop = asyncio.get_running_loop()
    started = loop.time()
    ended = await _request(sub, batch, timeout_s, msgs)
    while ended is not None and len(msgs) < batch and ends_in_a_cut_batch(msgs):
        # The server ended the request while it was storing an atomic batch: the rest is
        # committed and follows within moments, so it joins this batch (once: a request
        # that brought none of it ends the wait).
        had = len(msgs)
        ended = await _request(sub, batch - had, REST_OF_BATCH_S, msgs)
        if len(msgs) == had:
            break
    if ended is None:  # a full batch, or the deadline passed
        return msgs
    status = ended.headers.get(STATUS) if ended.headers else None
    if status not in ENDS_REQUEST and status != CONFLICT:
        if msgs:
            return msgs
        raise nats.js.errors.APIError.from_msg(ended)
    if not msgs and loop.time() - started < timeout_s / 2:
        await asyncio.sleep(EMPTY_PAUSE_S)
    return msgs


async def _request(
    sub: JetStreamContext.PullSubscription, batch: int, timeout_s: float, msgs: list[Msg]
) -> Msg | None:
    """Send one pull request for up to `batch` messages and add them to `msgs`; the status
    that ended it, or None when it ended full or its deadline passed first (raises
    ConnectionClosedError when the connection is closed and `msgs` is empty)."""
    nc = sub._nc
    inner = sub._sub
    queue: asyncio.Queue[Msg] = inner._pending_queue
    if nc.is_closed:
        if msgs:
            return None
        raise nats.errors.ConnectionClosedError
    expires_ns = int(timeout_s * 1_000_000_000)
    await nc.publish(
        sub._nms,
        b'{"batch":%d,"expires":%d,"no_wait":true}' % (batch, expires_ns),
        sub._deliver,
    )
    wanted = len(msgs) + batch
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(loop.time() + timeout_s + DEADLINE_MARGIN_S):
            while len(msgs) < wanted:
                msg = await queue.get()  # one wait per burst, then the rest without waiting
                while True:
                    inner._pending_size -= len(msg.data)
                    status = msg.headers.get(STATUS) if msg.headers else None
                    if status is None:
                        msgs.append(msg)
                    elif status != HEARTBEAT:
                        return msg
                    if len(msgs) >= wanted or queue.empty():
                        break
                    msg = queue.get_nowait()
    except TimeoutError:
        if nc.is_closed and not msgs:
            raise nats.errors.ConnectionClosedError from None
    return None


def ends_in_a_cut_batch(msgs: list[Msg]) -> bool:
    """Whether the last of `msgs` (a first delivery) belongs to an atomic batch whose
    commit message has not come: the server ended the request while storing that batch."""
    if not msgs:
        return False
    last = msgs[-1]
    headers = last.headers
    if not headers or BATCH_ID not in headers or BATCH_COMMIT in headers:
        return False
    try:
        return int(last.metadata.num_delivered) == 1
    except Exception:
        return False
