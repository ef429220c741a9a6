"""Zip archives of a version, with every path validated before it goes in."""

from __future__ import annotations

import io
import re
import unicodedata
import zipfile
from collections.abc import Callable
from urllib.parse import quote

from contracts.paths import safe_path

# A fixed timestamp keeps archives of the same version byte-identical.
_EPOCH = (2000, 1, 1, 0, 0, 0)


def build_zip(contents: dict[str, bytes]) -> bytes:
    """A zip of the files, paths validated, sorted, deflated, deterministic."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(contents):
            info = zipfile.ZipInfo(safe_path(path), date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, contents[path])
    return buffer.getvalue()


def content_disposition(project_name: str, version: int) -> str:
    """`attachment` with an ASCII `filename` for old clients and the exact name, UTF-8 and
    percent-encoded, in `filename*` (RFC 6266), so any valid project name can be a header."""
    exact = _slug(project_name, str.isalnum)
    folded = unicodedata.normalize("NFKD", project_name).encode("ascii", "ignore").decode()
    ascii_name = _slug(folded, lambda ch: ch.isascii() and ch.isalnum())
    return (
        f'attachment; filename="{ascii_name}-v{version}.zip"; '
        f"filename*=UTF-8''{quote(f'{exact}-v{version}.zip', safe='')}"
    )


def _slug(name: str, keep: Callable[[str], bool]) -> str:
    """`name` with each run of other characters than `keep`'s (and `-_`) one `-`."""
    kept = "".join(ch if keep(ch) or ch in "-_" else "-" for ch in name)
    return re.sub(r"-{2,}", "-", kept).strip("-") or "project"
