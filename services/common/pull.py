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
EMPTY_PAUSE_S = 0.05
"""Pause after a request that the server ended early with nothing, so that a consumer in
that state (a 409, pull requests of another process pending) is not asked in a hot loop."""


async def pull_batch(
    sub: JetStreamContext.PullSubscription, batch: int, timeout_s: float
) -> list[Msg]:
    """Up to `batch` messages of a pull subscription, waiting at most about `timeout_s`
    for the first ones; [] when none came.

    Raises what nats-py's `fetch` raises: `nats.errors.ConnectionClosedError` on a
    closed connection, `nats.js.errors.APIError` (its subclass for the code) for a status
    that is not the normal end of a request, such as a `503` when JetStream has no
    responder for the consumer.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    nc = sub._nc
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

    if nc.is_closed:
        raise nats.errors.ConnectionClosedError
    expires_ns = int(timeout_s * 1_000_000_000)
    await nc.publish(
        sub._nms,
        b'{"batch":%d,"expires":%d,"no_wait":true}' % (batch, expires_ns),
        sub._deliver,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    ended: Msg | None = None
    status: str | None = None
    try:
        async with asyncio.timeout_at(started + timeout_s + DEADLINE_MARGIN_S):
            while len(msgs) < batch:
                msg = await queue.get()  # one wait per burst, then the rest without waiting
                while True:
                    inner._pending_size -= len(msg.data)
                    status = msg.headers.get(STATUS) if msg.headers else None
                    if status is None:
                        msgs.append(msg)
                    elif status != HEARTBEAT:
                        ended = msg
                        break
                    if len(msgs) >= batch or queue.empty():
                        break
                    msg = queue.get_nowait()
                if ended is not None:
                    break
    except TimeoutError:
        if nc.is_closed and not msgs:
            raise nats.errors.ConnectionClosedError from None
        return msgs
    if ended is not None:
        if status not in ENDS_REQUEST and status != CONFLICT:
            if msgs:
                return msgs
            raise nats.js.errors.APIError.from_msg(ended)
        if not msgs and loop.time() - started < timeout_s / 2:
            await asyncio.sleep(EMPTY_PAUSE_S)
    return msgs
