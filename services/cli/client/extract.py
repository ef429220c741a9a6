"""Extracting a version's zip without trusting it: every entry goes through the same path
validator as the rest of Kiln, and all are checked before a single file is written."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

from contracts import limits
from contracts.paths import PathRejected, safe_path


class UnsafeArchive(Exception):
    """The zip holds an entry that could write outside its directory, or is not a file."""


def checked_entries(archive: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, str]]:
    """Every file entry with its validated path; UnsafeArchive naming the first bad one.

    Refused: a path `safe_path` rejects (absolute, `..`, a drive, a secret dot-file …), a
    symlink or device (the Unix mode in the external attributes), the same path twice (also
    differing only in case, which collide on macOS and Windows), and sizes over Kiln's
    own limits. Folder entries are checked too, and then skipped.
    """
    entries: list[tuple[zipfile.ZipInfo, str]] = []
    seen: set[str] = set()
    total = 0
    for info in archive.infolist():
        name = info.filename.removesuffix("/") if info.is_dir() else info.filename
        try:
            path = safe_path(name)
        except PathRejected as exc:
            raise UnsafeArchive(f"{info.filename!r}: {exc.reason}") from None
        kind = stat.S_IFMT(info.external_attr >> 16)
        if info.is_dir():
            if kind and kind != stat.S_IFDIR:
                raise UnsafeArchive(f"{info.filename!r} is not a regular folder")
            continue
        if kind and kind != stat.S_IFREG:
            raise UnsafeArchive(f"{info.filename!r} is not a regular file (a link or device)")
        if path.casefold() in seen:
            raise UnsafeArchive(f"{path!r} appears twice")
        if info.file_size > limits.MAX_FILE_BYTES:
            raise UnsafeArchive(f"{path!r} is larger than {limits.MAX_FILE_BYTES} bytes")
        total += info.file_size
        if total > limits.MAX_GENERATION_BYTES or len(entries) >= limits.MAX_FILES_PER_GENERATION:
            raise UnsafeArchive("the archive is larger than any version Kiln makes")
        seen.add(path.casefold())
        entries.append((info, path))
    return entries


def extract(archive: zipfile.ZipFile, directory: Path) -> list[str]:
    """Write every file of `archive` under `directory`; nothing at all if any entry is bad."""
    entries = checked_entries(archive)
    root = directory.resolve()
    for _, path in entries:
        # safe_path already ensured this, unless a symlink inside `directory` leads out.
        if not (root / path).resolve().is_relative_to(root):
            raise UnsafeArchive(f"{path!r} would land outside {directory}")
    contents = [(path, archive.read(info)) for info, path in entries]  # CRC-checked
    for path, content in contents:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return [path for path, _ in contents]
