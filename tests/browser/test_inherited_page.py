"""An iteration's page in Chromium: the files it inherits by manifest (`version.based_on`,
issue #20) are listed, open with their content fetched on demand, and survive a reload
and a network drop, each event shown once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, Request, expect

from tests.browser.conftest import Screenshots
from tests.browser.scripted import ScriptedProvider
from tests.browser.test_page import (
    assert_page_matches_history,
    open_page,
    page_events,
    page_files,
    wait_finished,
    wait_progress,
    wait_running,
)
from tests.conftest import make_settings
from tests.support import client as kiln
from tests.support.stack import Stack, running_stack

LOCKED = "README.md"
"""Locked in the iteration, so inherited unchanged to its end."""
REWRITTEN_LATER = "tests/test_api.py"
"""Inherited, rewritten by the iteration in its tests phase (held while the page opens it)."""


def file_fetches(page: Page, generation_id: str) -> list[str]:
    """The paths of the generation's files the page fetches from now on (a live list)."""
    prefix = f"/generations/{generation_id}/files/"
    paths: list[str] = []

    def record(request: Request) -> None:
        if prefix in request.url:
            paths.append(request.url.split(prefix, 1)[1].replace("%2F", "/"))

    page.on("request", record)
    return paths


async def open_inherited(page: Page, path: str, content: str) -> None:
    """Open `path` from the file tree; the viewer says it is the parent's and shows `content`."""
    await page.locator(f"[data-ref=tree] li.file[data-path='{path}'] .file-button").click()
    viewer = page.locator("[data-ref=viewer]")
    await expect(viewer.locator(".viewer-path")).to_have_text(path)
    await expect(viewer.locator(".viewer-head")).to_contain_text("from the parent")
    code = viewer.locator("pre.code-view code")
    await expect(code).to_have_text(content.strip())
    assert await code.text_content() == content


async def based_on_line(page: Page, parent: dict[str, str]) -> None:
    """The event log shows the manifest once, as a sentence about the parent's files."""
    size = sum(len(content.encode()) for content in parent.values())
    assert size < 1024, "the sentence below says bytes as a plain number of B"
    line = page.locator("[data-ref=events] li[data-type='version.based_on']")
    await expect(line).to_have_count(1)
    await expect(line).to_contain_text(f"{len(parent)} file(s) of the parent kept ({size} B)")


async def parent_contents(stack: Stack, generation_id: str) -> dict[str, str]:
    """path → content of every file of a version, from the files API."""
    contents = {}
    for path in await kiln.files_of(stack.alice, generation_id):
        response = await stack.alice.get(f"/generations/{generation_id}/files/{path}")
        assert response.status_code == 200, response.text
        contents[path] = response.text
    return contents


async def test_an_iterations_inherited_files_open_live_after_a_reload_and_offline(
    tmp_path: Path, nats_server: Any, browser: Browser, screenshots: Screenshots
) -> None:
    provider = ScriptedProvider(phase_delay_s=0.1)
    settings = make_settings(tmp_path, nats_server.url)
    async with (
        running_stack(settings, providers={"offline": provider}) as stack,
        open_page(browser, stack, watch_failure=True) as page,
    ):
        v1 = (await stack.create_completed())["generation_id"]
        parent = await parent_contents(stack, v1)
        provider.hold("tests")
        v2 = (await stack.iterate(v1, "add a changelog", locked_paths=[LOCKED]))["generation_id"]
        fetched = file_fetches(page, v2)

        # Following live: every parent file is listed, the inherited ones open.
        await page.goto(f"/#/g/{v2}")
        await wait_running(page, "tests", 60)
        assert sorted(await page_files(page)) == sorted(parent)
        await based_on_line(page, parent)
        await open_inherited(page, REWRITTEN_LATER, parent[REWRITTEN_LATER])
        assert fetched == [REWRITTEN_LATER], "fetched on demand, once"
        await open_inherited(page, LOCKED, parent[LOCKED])
        await screenshots.take(page, "live-inherited", full_page=False)

        # A reload is a late client: it replays the log and shows the same, once.
        before = (await page_files(page), await page_events(page))
        await page.reload()
        await wait_progress(page, 60)
        await expect(page.locator("[data-ref=events] li")).to_have_count(len(before[1]))
        assert (await page_files(page), await page_events(page)) == before
        await based_on_line(page, parent)
        await open_inherited(page, REWRITTEN_LATER, parent[REWRITTEN_LATER])

        # Offline while the iteration goes on; back, it catches up without a double.
        await page.context.set_offline(True)
        await expect(page.locator("[data-ref=connection]")).to_contain_text("reconnecting")
        provider.hold("docs")
        provider.release("tests")
        await kiln.read_events(
            stack.alice,
            f"/generations/{v2}/stream",
            until=lambda e: e.type == "phase.started" and e.data["phase"] == "docs",
        )
        await page.context.set_offline(False)
        await wait_progress(page, 80)
        provider.release("docs")
        await wait_finished(page)
        await assert_page_matches_history(page, stack, v2)
        await based_on_line(page, parent)
        await open_inherited(page, LOCKED, parent[LOCKED])
        await screenshots.take(page, "finished-inherited", full_page=False)

        # A late client of the finished version.
        await page.reload()
        await wait_finished(page)
        await assert_page_matches_history(page, stack, v2)
        await based_on_line(page, parent)
        await open_inherited(page, LOCKED, parent[LOCKED])
        assert await page.evaluate("window.__kilnEarlyFailure") is None
