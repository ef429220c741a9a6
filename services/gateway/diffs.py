"""A version against its parent: per-file status and unified diffs."""

from __future__ import annotations

import difflib
from typing import Any

from services.gateway.schemas import DiffStatus, DiffSummary, FileDiff


def _lines(content: bytes) -> list[str]:
    return content.decode("utf-8", errors="replace").splitlines(keepends=True)


def diff_versions(
    parent: dict[str, bytes],
    child: dict[str, bytes],
    reasons: dict[str, str] | None = None,
    repaired: dict[str, list[int]] | None = None,
) -> tuple[DiffSummary, list[FileDiff]]:
    """The summary and the changed files (added, modified, deleted), sorted by path.

    `repaired` names, per path, the repair rounds that changed it."""
    reasons = reasons or {}
    repaired = repaired or {}
    files: list[FileDiff] = []
    unchanged = 0
    for path in sorted(parent.keys() | child.keys()):
        old, new = parent.get(path), child.get(path)
        if old == new:
            unchanged += 1
            continue
        status: DiffStatus = "added" if old is None else "deleted" if new is None else "modified"
        diff = "".join(
            difflib.unified_diff(
                _lines(old or b""),
                _lines(new or b""),
                fromfile="/dev/null" if old is None else f"a/{path}",
                tofile="/dev/null" if new is None else f"b/{path}",
            )
        )
        files.append(
            FileDiff(
                path=path,
                status=status,
                diff=diff,
                reason=reasons.get(path),
                repair_rounds=repaired.get(path, []),
            )
        )
    summary = DiffSummary(
        added=sum(f.status == "added" for f in files),
        modified=sum(f.status == "modified" for f in files),
        deleted=sum(f.status == "deleted" for f in files),
        unchanged=unchanged,
    )
    return summary, files


def as_patch(files: list[FileDiff]) -> str:
    """All the file diffs as one patch text."""
    return "".join(f.diff if f.diff.endswith("\n") else f.diff + "\n" for f in files if f.diff)


def repaired_files(events: list[tuple[str, dict[str, Any]]]) -> dict[str, list[int]]:
    """path → the repair rounds that changed it and were kept, from (type, body) events."""
    rounds: dict[int, list[str]] = {}
    for kind, body in events:
        if kind == "repair.completed" and body.get("outcome", "changed") == "changed":
            rounds[int(body["round"])] = [*body.get("files_changed", []), *body.get("deleted", [])]
        elif kind == "repair.reverted":
            rounds.pop(int(body["round"]), None)
    repaired: dict[str, list[int]] = {}
    for round_, paths in sorted(rounds.items()):
        for path in paths:
            repaired.setdefault(path, []).append(round_)
    return repaired
