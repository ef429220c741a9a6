"""Extracting a zip checks every entry first: one bad entry and nothing is written."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest

from contracts import limits
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


def test_names_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchive, match="appears twice"):
        extract(_zip({"App.py": b"A = 1\n", "app.py": b"A = 2\n"}), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_hostile_folder_entry_is_refused_too(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchive, match=r"'\.\./outside/'"):
        extract(_zip({"a.py": b"A = 1\n", "../outside/": b""}), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_entry_larger_than_any_kiln_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchive, match="larger than"):
        extract(_zip({"big.txt": b"x" * (limits.MAX_FILE_BYTES + 1)}), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_symlink_already_in_the_directory_cannot_lead_a_file_out(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "app").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeArchive, match="outside"):
        extract(_zip({"README.md": b"# x\n", "app/main.py": b"A = 1\n"}), tmp_path / "out")
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert not (tmp_path / "out" / "README.md").exists()


def test_a_corrupt_entry_stops_the_extraction_before_any_write(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a.py", b"A = 1\n")
        archive.writestr("b.py", b"B = 2\n")
    data = buffer.getvalue().replace(b"B = 2", b"B = 3")  # the CRC no longer matches
    with pytest.raises(zipfile.BadZipFile):
        extract(zipfile.ZipFile(io.BytesIO(data)), tmp_path / "out")
    assert not (tmp_path / "out").exists()
