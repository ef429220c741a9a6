"""Extracting a zip checks every entry first: one bad entry and nothing is written."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest

from services.cli.client.extract import UnsafeArchive, extract


def _zip(entries: dict[str, bytes], *, symlink: str | None = None) -> zipfile.ZipFile:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return zipfile.ZipFile(io.BytesIO(buffer.getvalue()))


def test_a_version_is_extracted_inside_its_directory(tmp_path: Path) -> None:
    written = extract(_zip({"app/main.py": b"A = 1\n", "README.md": b"# x\n"}), tmp_path / "out")
    assert sorted(written) == ["README.md", "app/main.py"]
    assert (tmp_path / "out" / "app" / "main.py").read_bytes() == b"A = 1\n"


@pytest.mark.parametrize(
    "bad", ["../evil.py", "/etc/cron.d/x", "app/../../evil.py", "C:\\evil.py", ".git/config"]
)
def test_a_hostile_entry_is_refused_and_nothing_is_written(tmp_path: Path, bad: str) -> None:
    archive = _zip({"app/good.py": b"G = 1\n", bad: b"boom\n"})
    with pytest.raises(UnsafeArchive, match=r"evil|cron|config|rejected|not"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.py").exists()


def test_a_symlink_entry_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchive, match="not a regular file"):
        extract(_zip({"a.py": b"A = 1\n"}, symlink="link.py"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_duplicate_entry_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.py", "A = 1\n")
        archive.writestr("./a.py", "A = 2\n")
    with pytest.raises(UnsafeArchive):
        extract(zipfile.ZipFile(io.BytesIO(buffer.getvalue())), tmp_path / "out")
