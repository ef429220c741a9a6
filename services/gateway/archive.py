"""Zip archives of a version, with every path validated before it goes in."""

from __future__ import annotations

import io
import zipfile

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
