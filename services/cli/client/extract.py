"""Extracting a version's zip without trusting it: every entry is checked before anything
is written, through the same path validator as the rest of Kiln."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

from contracts.paths import PathRejected, safe_path


class UnsafeArchive(Exception):
    """The zip holds an entry that could write outside its directory (or is not a file)."""


def checked_entries(archive: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, str]]:
    """Every file entry with its validated path; UnsafeArchive naming the first bad one."""
    entries: list[tuple[zipfile.ZipInfo, str]] = []
    seen: set[str] = set()
    for info in archive.infolist():
        if info.is_dir():
            continue
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind and kind != stat.S_IFREG:
            raise UnsafeArchive(f"{info.filename!r} is not a regular file (a link or device)")
        try:
            path = safe_path(info.filename)
        except PathRejected as exc:
            raise UnsafeArchive(f"{info.filename!r}: {exc.reason}") from None
        if path in seen:
            raise UnsafeArchive(f"{path!r} appears twice")
        seen.add(path)
        entries.append((info, path))
    return entries


def extract(archive: zipfile.ZipFile, directory: Path) -> list[str]:
    """Write every file of `archive` under `directory`; nothing at all if any entry is bad."""
    entries = checked_entries(archive)
    root = directory.resolve()
    for _, path in entries:
        target = (root / path).resolve()
        if not target.is_relative_to(root):  # belt and braces: safe_path already ensured it
            raise UnsafeArchive(f"{path!r} would land outside {directory}")
    for info, path in entries:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read(info))
    return [path for _, path in entries]
