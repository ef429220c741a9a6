"""`kiln audit GEN_ID [--verify]`: a generation's hash chain, and whether it holds.

By default it asks the gateway (`GET /generations/{id}/events?verify=true`), which
recomputes the chain from the read model's stored rows: that catches an event changed in
the database. `--from-nats URL` reads the generation straight from the JetStream stream
(the source of truth) instead, no gateway or API key needed.

Exit codes: 0 the chain holds (or was only printed), 1 a broken link (named on stderr),
2 the audit could not be done (unreachable, unauthorised, unknown generation).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import msgspec
from nats.js import JetStreamContext

from contracts import subjects
from contracts.audit import (
    BrokenLink,
    ChainReport,
    StoredLink,
    check_contents,
    content_names,
    describe,
    verify_chain,
)
from services.cli.client.connection import ClientError, Gateway, add_connection_arguments


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add `kiln audit` to the `kiln` command's subcommands."""
    parser = commands.add_parser(
        "audit", help="print a generation's hash chain; --verify recomputes it"
    )
    parser.add_argument("generation_id", metavar="GEN_ID")
    parser.add_argument(
        "--verify", action="store_true", help="recompute the chain; exit 1 naming a broken link"
    )
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    add_connection_arguments(parser)
    parser.add_argument(
        "--from-nats",
        metavar="NATS_URL",
        help="verify the JetStream stream itself instead of the gateway's read model",
    )
    parser.set_defaults(handler=run)


class _Row(msgspec.Struct, frozen=True):
    stream_seq: int
    seq: int
    type: str
    at: str
    hash: str
    prev_hash: str


def run(args: argparse.Namespace) -> int:
    """Audit one generation; the exit code."""
    report: ChainReport | None
    try:
        if args.from_nats:
            rows, report = asyncio.run(_from_stream(args.from_nats, args.generation_id))
        else:
            rows, report = _from_gateway(args)
    except _Unavailable as exc:
        print(f"kiln audit: {exc}", file=sys.stderr)
        return 2
    verify = args.verify or bool(args.from_nats)
    if args.json:
        out: dict[str, Any] = {"generation_id": args.generation_id, "events": len(rows)}
        if verify and report is not None:
            out["verification"] = msgspec.to_builtins(report)
        print(msgspec.json.encode(out).decode())
    else:
        _print_chain(rows, report.broken if verify and report else None)
    if not verify or report is None:
        return 0
    if report.broken is not None:
        print(
            f"kiln audit: generation {args.generation_id}: the chain is broken at "
            + describe(report.broken),
            file=sys.stderr,
        )
        return 1
    if not args.json:
        print(
            f"Chain intact: {report.verified} events, head {report.head_hash[:16]}… "
            f"({'the stream' if args.from_nats else 'the read model'})"
        )
    return 0


class _Unavailable(RuntimeError):
    """The audit could not be done."""


def _from_gateway(args: argparse.Namespace) -> tuple[list[_Row], ChainReport | None]:
    gateway = Gateway.from_args(args)
    try:
        response = gateway.request(
            "GET",
            f"/generations/{args.generation_id}/events",
            params={"verify": "true"} if args.verify else None,
            timeout=60.0,
        )
    except ClientError as exc:
        raise _Unavailable(str(exc)) from None
    finally:
        gateway.close()
    body = response.json()
    rows = [
        _Row(
            stream_seq=e["stream_seq"],
            seq=e["seq"],
            type=e["type"],
            at=str(e["at"]),
            hash=e["hash"],
            prev_hash=str(e["event"].get("prev_hash", "")),
        )
        for e in body["events"]
    ]
    verification = body.get("verification")
    report = msgspec.convert(verification, ChainReport) if verification else None
    return rows, report


async def _from_stream(nats_url: str, generation_id: str) -> tuple[list[_Row], ChainReport]:
    import nats
    import nats.errors

    from contracts.codec import DecodeError, event_hash
    from services.common.eventlog import last_stream_seq, read_subject

    try:
        nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=2)
    except (OSError, nats.errors.Error) as exc:
        raise _Unavailable(f"cannot connect to NATS at {nats_url}: {exc!r}") from None
    try:
        js = nc.jetstream()
        target = await last_stream_seq(js, generation_id)
        if not target:
            raise _Unavailable(f"the stream has no events of generation {generation_id}")
        try:
            raw = await read_subject(
                js,
                subjects.generation_events_any_project(generation_id),
                after_stream_seq=0,
                upto_stream_seq=target,
            )
        except TimeoutError as exc:
            raise _Unavailable(str(exc)) from None
        links = [StoredLink(stream_seq=seq, data=data) for seq, data in raw]
        contents = await _named_contents(js, links)
    finally:
        await nc.drain()
    rows = []
    for link in links:
        try:
            body = msgspec.json.decode(link.data)
            digest = event_hash(link.data)
        except (msgspec.DecodeError, DecodeError):
            body, digest = {}, "?"
        if not isinstance(body, dict):
            body = {}
        rows.append(
            _Row(
                stream_seq=link.stream_seq,
                seq=int(body.get("seq") or 0),
                type=str(body.get("type", "?")),
                at=str(body.get("at", "")),
                hash=digest,
                prev_hash=str(body.get("prev_hash", "")),
            )
        )
    return rows, check_contents(verify_chain(links), links, contents)


async def _named_contents(js: JetStreamContext, links: list[StoredLink]) -> dict[str, bytes]:
    """sha256 → content in the broker, of each one the log names a file by (those the
    broker lacks are left out, and one it cannot inflate is empty: `check_contents`
    names both)."""
    from services.common.blobs import BlobCorrupt, BlobStore

    store = BlobStore(js)
    found: dict[str, bytes] = {}
    for sha in sorted(content_names(links)):
        try:
            data = await store.read(sha)
        except ValueError:  # not a sha256: no subject can hold it
            continue
        except BlobCorrupt:
            data = b""  # whatever it was, not the content of that name
        if data is not None:
            found[sha] = data
    return found


def _print_chain(rows: list[_Row], broken: BrokenLink | None) -> None:
    print(f"{'SEQ':>5} {'STREAM':>7}  {'TIME':<27} {'TYPE':<22} {'HASH':<16} PREV_HASH")
    for row in rows:
        mark = "  <- broken" if broken and broken.stream_seq == row.stream_seq else ""
        print(
            f"{row.seq:>5} {row.stream_seq:>7}  {row.at[:27]:<27} {row.type:<22} "
            f"{row.hash[:16]:<16} {row.prev_hash[:16] or '-'}{mark}"
        )
