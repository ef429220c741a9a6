"""Verifying a generation's hash chain: the audit log is tamper-evident.

Each event carries `prev_hash`, the sha256 of the previous event of its generation in
canonical form (`codec.event_hash`). `verify_chain` walks a generation's events as stored
and names the first link that does not hold:

- `undecodable`: the stored bytes are not a JSON object with an integer `seq`;
- `seq_gap`: the seq is not the previous one plus one (an event missing, repeated or
  reordered);
- `prev_hash`: the event's `prev_hash` is not the hash of the event before it (that one was
  changed after this one was written, or this one was);
- `hash`: the hash recomputed from the stored bytes differs from the hash stored beside them
  (the event was changed where it is stored);
- `blob`: a file named by sha256 (in a `version.based_on`, or a `file.written` without
  inline content) has no stored content, or content that hashes otherwise
  (`check_contents`; the chain covers the names, not the contents).

Pure: no I/O, so the gateway, the CLI and the tests share it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec

from contracts.codec import DecodeError, event_hash

Check = Literal["undecodable", "seq_gap", "prev_hash", "hash", "blob"]


class StoredLink(msgspec.Struct, frozen=True, kw_only=True):
    """One event as a store holds it: its stream sequence, bytes and (if kept) its hash."""

    stream_seq: int
    data: bytes
    stored_hash: str | None = None


class BrokenLink(msgspec.Struct, frozen=True, kw_only=True):
    """The first event whose link does not hold, and which check failed."""

    stream_seq: int
    seq: int | None
    event_id: str | None
    type: str | None
    check: Check
    message: str


class ChainReport(msgspec.Struct, frozen=True, kw_only=True):
    """The verdict on a chain: `verified` events held before `broken` (if any)."""

    ok: bool
    checked: int
    verified: int
    head_hash: str
    broken: BrokenLink | None = None


_decoder = msgspec.json.Decoder(dict[str, Any])


def verify_chain(links: Iterable[StoredLink]) -> ChainReport:
    """Recompute a generation's chain from its stored events (in stream order)."""
    head_hash = ""
    verified = 0
    for link in links:
        digest, broken = _check(link, verified + 1, head_hash)
        if broken is not None:
            return ChainReport(
                ok=False,
                checked=verified + 1,
                verified=verified,
                head_hash=head_hash,
                broken=broken,
            )
        head_hash = digest
        verified += 1
    return ChainReport(ok=True, checked=verified, verified=verified, head_hash=head_hash)


def _check(
    link: StoredLink, expected_seq: int, previous_hash: str
) -> tuple[str, BrokenLink | None]:
    """The event's recomputed hash, and what is wrong with its link (None if it holds)."""
    try:
        body = _decoder.decode(link.data)
        digest = event_hash(link.data)
    except (msgspec.DecodeError, msgspec.ValidationError, DecodeError) as exc:
        return "", _broken(link, {}, "undecodable", f"not a JSON object: {exc}")
    seq = body.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return digest, _broken(link, body, "undecodable", "it has no integer seq")
    if seq != expected_seq:
        what = "one is missing" if seq > expected_seq else "repeated or out of order"
        return digest, _broken(
            link, body, "seq_gap", f"seq {seq} where {expected_seq} was due ({what})"
        )
    prev_hash = body.get("prev_hash", "")
    if prev_hash != previous_hash:
        before = f"the hash of seq {seq - 1}" if seq > 1 else "empty for the first event"
        return digest, _broken(
            link,
            body,
            "prev_hash",
            f"its prev_hash {str(prev_hash)[:16]}… is not {before} ({previous_hash[:16]}…)",
        )
    if link.stored_hash is not None and link.stored_hash != digest:
        return digest, _broken(
            link,
            body,
            "hash",
            f"its content hashes to {digest[:16]}…, not the stored {link.stored_hash[:16]}…",
        )
    return digest, None


def content_names(links: Iterable[StoredLink]) -> set[str]:
    """Every sha256 the events among `links` name a file's content by."""
    return {sha for _, body in _naming(links) for sha in _named(body)}


def check_contents(
    report: ChainReport, links: Iterable[StoredLink], contents: Mapping[str, bytes]
) -> ChainReport:
    """`report`, broken at the first event naming a sha256 whose content in `contents` is
    missing or hashes otherwise (an intact chain only: its first break stands)."""
    if not report.ok:
        return report
    for link, body in _naming(links):
        for sha in _named(body):
            content = contents.get(sha)
            if content is None:
                problem = f"the content {sha[:16]}… it names is not stored"
            elif hashlib.sha256(content).hexdigest() != sha:
                problem = f"the content stored as {sha[:16]}… hashes otherwise"
            else:
                continue
            return msgspec.structs.replace(
                report, ok=False, broken=_broken(link, body, "blob", problem)
            )
    return report


def _naming(links: Iterable[StoredLink]) -> list[tuple[StoredLink, dict[str, Any]]]:
    """The events that name file contents by sha256, as JSON objects."""
    found = []
    for link in links:
        try:
            body = _decoder.decode(link.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        kind = body.get("type")
        if kind == "version.based_on" or (kind == "file.written" and body.get("content") is None):
            found.append((link, body))
    return found


def _named(body: dict[str, Any]) -> list[str]:
    if body.get("type") == "file.written":
        return [str(body.get("sha256"))]
    files = body.get("files")
    return [
        str(f.get("sha256"))
        for f in (files if isinstance(files, list) else [])
        if isinstance(f, dict)
    ]


def describe(broken: BrokenLink) -> str:
    """One line naming the broken event, for logs and the CLI."""
    kind = f" ({broken.type})" if broken.type else ""
    seq = f"seq {broken.seq}" if broken.seq is not None else "an event"
    return (
        f"{seq}{kind} at stream seq {broken.stream_seq}, event {broken.event_id or '?'}: "
        f"{broken.check} check failed: {broken.message}"
    )


def _broken(link: StoredLink, body: dict[str, Any], check: Check, message: str) -> BrokenLink:
    seq = body.get("seq")
    event_id = body.get("event_id")
    tag = body.get("type")
    return BrokenLink(
        stream_seq=link.stream_seq,
        seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        event_id=event_id if isinstance(event_id, str) else None,
        type=tag if isinstance(tag, str) else None,
        check=check,
        message=message,
    )
