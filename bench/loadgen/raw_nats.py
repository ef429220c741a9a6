"""Raw nats-py readers, the baselines: ordered consumers replaying one subject, or a
durable pull consumer fetching and acking a whole stream.

Run as `python -m bench.loadgen.raw_nats <config.json>` (protocol in `workers.py`).
Config: url, mode ("ordered" or "pull"), subject, target (the last stream sequence to
read), consumers and per_connection (ordered), stream, durable and batch (pull), decode.
Tuned so they can finish: pending limits off, several connections for many consumers.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import msgspec
import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bench.loadgen.workers import Control


class _Data(msgspec.Struct):
    type: str
    seq: int
    message: str = ""


_decode = msgspec.json.Decoder(_Data).decode


async def _ordered(control: Control, config: dict[str, Any]) -> dict[str, Any]:
    consumers = int(config.get("consumers", 1))
    per_connection = int(config.get("per_connection", 50))
    target = int(config["target"])
    decode = bool(config.get("decode"))
    connections = [
        await nats.connect(config["url"], pending_size=512 * 1024**2, max_reconnect_attempts=0)
        for _ in range((consumers + per_connection - 1) // per_connection)
    ]
    await control.wait("go")
    started = time.time()
    cpu = time.process_time()
    loop = asyncio.get_running_loop()
    counts = [0] * consumers
    done = [loop.create_future() for _ in range(consumers)]
    finished = [0.0] * consumers

    def reader(i: int) -> Any:
        async def on_message(msg: Msg) -> None:
            counts[i] += 1
            if decode:
                _decode(msg.data)
            if msg.metadata.sequence.stream >= target and not done[i].done():
                finished[i] = time.time()
                done[i].set_result(None)

        return on_message

    async def subscribe(i: int) -> Any:
        js = connections[i // per_connection].jetstream()
        # 1,000 consumers created at once can outlast the API's 5 s timeout on a loaded
        # machine: the baseline retries (its clock runs meanwhile) rather than fail.
        for attempt in range(1, 4):
            try:
                return await js.subscribe(
                    config["subject"],
                    stream=config["stream"],
                    ordered_consumer=True,
                    cb=reader(i),
                    config=ConsumerConfig(
                        deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0
                    ),
                    pending_msgs_limit=-1,
                    pending_bytes_limit=-1,
                )
            except nats.errors.TimeoutError:
                if attempt == 3:
                    raise
        raise AssertionError("unreachable")

    subs = await asyncio.gather(*(subscribe(i) for i in range(consumers)))
    await asyncio.wait_for(asyncio.gather(*done), config.get("timeout", 300.0))
    cpu = time.process_time() - cpu
    for sub in subs:
        try:
            await sub.unsubscribe()
        except Exception:
            pass
    for nc in connections:
        await nc.close()
    return {
        "started": started,
        "finished": max(finished),
        "cpu_s": cpu,
        "consumers": consumers,
        "events": sum(counts),
        "complete": sum(1 for c in counts if c >= int(config.get("expect", 0))),
    }


async def _pull(control: Control, config: dict[str, Any]) -> dict[str, Any]:
    nc = await nats.connect(config["url"], pending_size=512 * 1024**2)
    js = nc.jetstream()
    target = int(config["target"])
    batch = int(config.get("batch", 256))
    sub = await js.pull_subscribe(
        config["subject"],
        durable=config["durable"],
        stream=config["stream"],
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=20_000, ack_wait=30.0),
    )
    await control.wait("go")
    started = time.time()
    cpu = time.process_time()
    count = 0
    last = 0
    while last < target:
        try:
            msgs = await sub.fetch(batch, timeout=2.0)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        for msg in msgs:
            await msg.ack()
            count += 1
            last = max(last, msg.metadata.sequence.stream)
    await nc.flush()
    finished = time.time()
    cpu = time.process_time() - cpu
    await nc.close()
    return {"started": started, "finished": finished, "cpu_s": cpu, "events": count}


async def run(control: Control, config: dict[str, Any]) -> dict[str, Any]:
    if config["mode"] == "pull":
        return await _pull(control, config)
    return await _ordered(control, config)


if __name__ == "__main__":
    Control.main(run, sys.argv[1])
