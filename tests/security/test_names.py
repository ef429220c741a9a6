"""Names a stranger may choose: any valid project name downloads, and a name, id or text
that would break a later phase (a trailing newline, a control or bidi character) is a 400
naming the field, up front."""

from __future__ import annotations

import io
import zipfile
from urllib.parse import unquote

import pytest

from services.common.settings import Settings
from tests.support.stack import running_stack


@pytest.mark.parametrize("name", ["商店", "\u0455hop", "café au lait", 'a"b;c\\d'])
async def test_any_valid_project_name_downloads_with_an_rfc_6266_filename(
    settings: Settings, name: str
) -> None:
    async with running_stack(settings) as stack:
        accepted = await stack.create(project_name=name)
        await stack.wait_status(accepted["generation_id"], "completed")
        response = await stack.alice.get(f"/generations/{accepted['generation_id']}/archive")
        assert response.status_code == 200, response.text
        assert zipfile.ZipFile(io.BytesIO(response.content)).testzip() is None
        disposition = response.headers["content-disposition"]
        assert disposition.isascii()
        plain = disposition.split('filename="', 1)[1].split('"', 1)[0]
        assert plain.endswith("-v1.zip") and all(ch.isalnum() or ch in "-_." for ch in plain)
        exact = unquote(disposition.split("filename*=UTF-8''", 1)[1], errors="strict")
        expected = "".join(ch if ch.isalnum() else "-" for ch in name)
        assert exact == "-".join(filter(None, expected.split("-"))) + "-v1.zip"
