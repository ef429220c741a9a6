"""The hash chain: an intact log verifies; each kind of tampering names the first event."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from contracts.audit import (
    StoredLink,
    check_contents,
    content_names,
    describe,
    verify_chain,
)
from contracts.codec import content_sha256, encode, event_hash
from contracts.events import (
    FileWritten,
    GenerationCompleted,
    GenerationRequested,
    InheritedFile,
    PhaseCompleted,
    PhaseStarted,
    VersionBasedOn,
    utc_now,
)


def chain(length: int = 6) -> list[bytes]:
    """A generation's events as a writer encodes them, each naming its predecessor's hash."""
    common = {"generation_id": "g1", "project_id": "p1"}
    stored: list[bytes] = []
    for seq in range(1, length + 1):
        fields: dict[str, Any] = {
            **common,
            "event_id": f"e{seq}",
            "seq": seq,
            "at": utc_now(),
            "prev_hash": event_hash(stored[-1]) if stored else "",
        }
        if seq == 1:
            event: Any = GenerationRequested(
                **fields, owner="alice", project_name="shop", version=1
            )
        elif seq == length:
            event = GenerationCompleted(**fields, file_count=0, total_bytes=0, duration_ms=5)
        elif seq % 2 == 0:
            event = PhaseStarted(**fields, phase="plan")
        else:
            event = PhaseCompleted(**fields, phase="plan", summary=f"step {seq}")
        stored.append(encode(event))
    return stored


def links(stored: list[bytes], *, with_hashes: bool = True) -> list[StoredLink]:
    return [
        StoredLink(
            stream_seq=100 + i, data=data, stored_hash=event_hash(data) if with_hashes else None
        )
        for i, data in enumerate(stored)
    ]


def edited(data: bytes, **changes: Any) -> bytes:
    return msgspec.json.encode({**msgspec.json.decode(data), **changes})


@pytest.mark.parametrize("with_hashes", [True, False])
def test_an_intact_log_verifies(with_hashes: bool) -> None:
    stored = chain()
    report = verify_chain(links(stored, with_hashes=with_hashes))
    assert report.ok and report.broken is None
    assert report.checked == report.verified == len(stored)
    assert report.head_hash == event_hash(stored[-1])


def test_an_empty_log_verifies() -> None:
    assert verify_chain([]).ok


def test_key_order_and_whitespace_do_not_matter() -> None:
    stored = [
        msgspec.json.format(msgspec.json.encode(dict(reversed(msgspec.json.decode(d).items()))))
        for d in chain()
    ]
    assert verify_chain(links(stored, with_hashes=False)).ok


def test_a_changed_event_with_its_stored_hash_is_named_by_the_hash_check() -> None:
    stored = chain()
    original = links(stored)
    tampered = [*original]
    tampered[2] = msgspec.structs.replace(original[2], data=edited(stored[2], summary="forged"))

    report = verify_chain(tampered)

    assert not report.ok and report.broken is not None
    assert (report.broken.seq, report.broken.stream_seq, report.broken.event_id) == (3, 102, "e3")
    assert report.broken.check == "hash"
    assert report.verified == 2 and report.head_hash == event_hash(stored[1])
    assert "seq 3 (phase.completed) at stream seq 102, event e3: hash check" in describe(
        report.broken
    )


def test_a_changed_event_without_stored_hashes_breaks_the_next_link() -> None:
    stored = chain()
    stored[2] = edited(stored[2], summary="forged")
    report = verify_chain(links(stored, with_hashes=False))
    assert report.broken is not None
    assert (report.broken.seq, report.broken.check) == (4, "prev_hash")


def test_a_changed_hash_beside_a_changed_event_still_breaks_the_next_link() -> None:
    stored = chain()
    stored[2] = edited(stored[2], summary="forged")
    report = verify_chain(links(stored))  # the forger also updated the stored hash
    assert report.broken is not None
    assert (report.broken.seq, report.broken.check) == (4, "prev_hash")


def test_a_missing_event_is_a_seq_gap() -> None:
    stored = chain()
    del stored[3]
    report = verify_chain(links(stored))
    assert report.broken is not None
    assert (report.broken.seq, report.broken.check) == (5, "seq_gap")
    assert "4 was due" in report.broken.message


def test_a_first_event_with_a_prev_hash_is_refused() -> None:
    stored = chain()
    stored[0] = edited(stored[0], prev_hash="ab" * 32)
    report = verify_chain(links(stored, with_hashes=False))
    assert report.broken is not None
    assert (report.broken.seq, report.broken.check) == (1, "prev_hash")


@pytest.mark.parametrize("garbage", [b"not json", b"[1, 2]", b'{"type": "phase.started"}'])
def test_an_undecodable_event_is_named_by_its_stream_seq(garbage: bytes) -> None:
    stored = chain()
    stored[1] = garbage
    report = verify_chain(links(stored, with_hashes=False))
    assert report.broken is not None
    assert (report.broken.stream_seq, report.broken.check) == (101, "undecodable")


def manifest_chain(*contents: str) -> list[bytes]:
    """A chain whose second event names `contents` as inherited files."""
    first = encode(
        GenerationRequested(
            event_id="e1", generation_id="g2", project_id="p1", seq=1, at=utc_now(),
            owner="alice", project_name="shop", version=2, kind="iterate",
        )
    )  # fmt: skip
    based_on = VersionBasedOn(
        event_id="e2",
        generation_id="g2",
        project_id="p1",
        seq=2,
        at=utc_now(),
        prev_hash=event_hash(first),
        parent_generation_id="g1",
        files=[
            InheritedFile(path=f"f{i}.py", sha256=content_sha256(c), size=len(c.encode()))
            for i, c in enumerate(contents)
        ],
    )
    return [first, encode(based_on)]


def test_the_inherited_contents_are_checked_against_their_names() -> None:
    stored = links(manifest_chain("a = 1\n", "b = 2\n"))
    names = content_names(stored)
    assert names == {content_sha256("a = 1\n"), content_sha256("b = 2\n")}
    contents = {content_sha256(c): c.encode() for c in ("a = 1\n", "b = 2\n")}
    assert check_contents(verify_chain(stored), stored, contents).ok

    changed = {**contents, content_sha256("b = 2\n"): b"# a backdoor\n"}
    report = check_contents(verify_chain(stored), stored, changed)
    assert not report.ok and report.broken is not None
    assert (report.broken.seq, report.broken.type, report.broken.check) == (
        2,
        "version.based_on",
        "blob",
    )
    assert "hashes otherwise" in describe(report.broken)

    missing = {content_sha256("a = 1\n"): b"a = 1\n"}
    report = check_contents(verify_chain(stored), stored, missing)
    assert report.broken is not None and "is not stored" in report.broken.message


def test_a_file_written_named_by_content_is_checked_against_its_name() -> None:
    stored = manifest_chain("a = 1\n")
    written = [
        FileWritten(
            event_id=f"e{seq}", generation_id="g2", project_id="p1", seq=seq, at=utc_now(),
            prev_hash="", path=f"new{seq}.py", sha256=content_sha256(text), size=len(text),
            phase="api", content=inline,
        )
        for seq, text, inline in ((3, "n = 3\n", None), (4, "n = 4\n", "n = 4\n"))
    ]  # fmt: skip
    for event in written:
        stored.append(encode(msgspec.structs.replace(event, prev_hash=event_hash(stored[-1]))))
    chained = links(stored)
    assert verify_chain(chained).ok
    assert content_names(chained) == {content_sha256("a = 1\n"), content_sha256("n = 3\n")}, (
        "an inline content is checked by the chain itself, not looked up"
    )

    only_manifest = {content_sha256("a = 1\n"): b"a = 1\n"}
    report = check_contents(verify_chain(chained), chained, only_manifest)
    assert report.broken is not None
    assert (report.broken.seq, report.broken.type, report.broken.check) == (
        3,
        "file.written",
        "blob",
    )
    complete = {**only_manifest, content_sha256("n = 3\n"): b"n = 3\n"}
    assert check_contents(verify_chain(chained), chained, complete).ok


def test_a_broken_chain_is_reported_as_it_breaks_before_any_content_check() -> None:
    stored = manifest_chain("a = 1\n")
    tampered = [
        *links(stored[:1]),
        StoredLink(
            stream_seq=101,
            data=edited(stored[1], files=[]),
            stored_hash=event_hash(stored[1]),
        ),
    ]
    report = check_contents(verify_chain(tampered), tampered, {})
    assert report.broken is not None and report.broken.check == "hash"
