"""The web page in a real headless Chromium against a real running Kiln stack.

Each test drives the page as a person would, and checks what it shows against the
generation's own SSE history (read separately with httpx): the page never invents,
drops or doubles an event, and never says "failed" before a `generation.failed` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, expect
from services.orchestrator.providers.offline import OfflineProvider

from contracts.phases import PHASE_NAMES
from services.orchestrator.providers.base import PhaseRequest, ProviderError, Reporter
from tests.browser.conftest import Screenshots
from tests.conftest import ALICE_KEY, make_settings
from tests.support.stack import SSEEvent, Stack, running_stack

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1280, "height": 720}
PHONE = {"width": 390, "height": 844}

# Records the page's text the first time it says "failed" without a generation.failed
# event in its event log (checked on every DOM change, not only when the test looks).
EARLY_FAILURE_WATCH = """
window.__kilnEarlyFailure = null;
new MutationObserver(() => {
  if (window.__kilnEarlyFailure !== null || !document.body) return;
  const arrived = document.querySelector('[data-type="generation.failed"]');
  if (!arrived && /failed/i.test(document.body.innerText)) {
    window.__kilnEarlyFailure = document.body.innerText;
  }
}).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
"""


@contextlib.asynccontextmanager
async def open_page(
    browser: Browser, stack: Stack, *, key: str | None = ALICE_KEY, watch_failure: bool = False
) -> AsyncIterator[Page]:
    """A fresh browser context on the stack (the API key already stored unless key=None)."""
    context = await browser.new_context(base_url=stack.url, viewport=DESKTOP, accept_downloads=True)
    context.set_default_timeout(20_000)
    if key:
        await context.add_init_script(f"localStorage.setItem('kiln.apiKey', {json.dumps(key)})")
    if watch_failure:
        await context.add_init_script(EARLY_FAILURE_WATCH)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        await context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


async def create_from_form(page: Page, name: str = "shop") -> str:
    """Submit the create form with the example schema; the new generation's id."""
    await page.goto("/#/")
    await page.get_by_label("Project name").fill(name)
    await page.get_by_role("button", name="Generate").click()
    await page.wait_for_url(re.compile(r"#/g/[\w-]+$"))
    return page.url.rsplit("/", 1)[-1]


async def progress(page: Page) -> int:
    """What the progress bar says (aria-valuenow)."""
    return int(await page.get_by_role("progressbar").get_attribute("aria-valuenow") or 0)


async def wait_progress(page: Page, at_least: int, timeout: float = 30_000) -> int:
    """Wait until the progress bar shows at least `at_least` percent; what it shows."""
    await page.wait_for_function(
        "n => Number(document.querySelector('[role=progressbar]')"
        ".getAttribute('aria-valuenow')) >= n",
        arg=at_least,
        timeout=timeout,
    )
    return await progress(page)


async def wait_finished(page: Page, status: str = "completed") -> None:
    """Wait for the page to show the generation's terminal status."""
    await expect(page.locator("[data-ref=status]")).to_have_text(status, timeout=30_000)


async def page_events(page: Page) -> list[tuple[int, int, str]]:
    """The page's event log: (SSE id, seq, type) of every entry, in order."""
    return await page.locator("[data-ref=events] li").evaluate_all(
        "items => items.map(li => [Number(li.dataset.id), Number(li.dataset.seq), li.dataset.type])"
    )


async def page_phases(page: Page) -> list[tuple[str, str]]:
    """The phase timeline: (phase, state) of every entry, in order."""
    return await page.locator("[data-ref=timeline] li[data-phase]").evaluate_all(
        "items => items.map(li => [li.dataset.phase, li.dataset.state])"
    )


async def page_files(page: Page) -> list[str]:
    """The paths in the file tree."""
    return await page.locator("[data-ref=tree] li.file").evaluate_all(
        "items => items.map(li => li.dataset.path)"
    )


async def history(stack: Stack, generation_id: str) -> list[SSEEvent]:
    """The generation's whole SSE history, read over HTTP with a fresh token."""
    for _ in range(5):
        token = await stack.alice.post(f"/generations/{generation_id}/stream-token")
        token.raise_for_status()
        try:
            return await stack.events(token.json()["stream_url"], timeout=30)
        except httpx.HTTPStatusError as error:
            # A token of a 1 s lifetime may already have expired: ask again.
            if error.response.status_code != 401:
                raise
    raise AssertionError("could not read the SSE history")


def files_of(events: list[SSEEvent]) -> set[str]:
    """The files a generation's events leave: written and not deleted since."""
    files: set[str] = set()
    for event in events:
        if event.type == "file.written":
            files.add(event.data["path"])
        elif event.type == "file.deleted":
            files.discard(event.data["path"])
    return files


async def assert_page_matches_history(page: Page, stack: Stack, generation_id: str) -> None:
    """The page's event log is the SSE history exactly (no duplicate, no gap), every phase
    is in the timeline once, and the file tree holds the version's files."""
    events = await history(stack, generation_id)
    shown = await page_events(page)
    assert shown == [(e.id, e.data["seq"], e.type) for e in events]
    assert [seq for _, seq, _ in shown] == list(range(1, len(events) + 1))
    assert await page_phases(page) == [(name, "done") for name in PHASE_NAMES]
    assert sorted(await page_files(page)) == sorted(files_of(events))


async def test_create_watch_and_download(
    tmp_path: Path, nats_server: Any, browser: Browser, screenshots: Screenshots
) -> None:
    settings = make_settings(tmp_path, nats_server.url, KILN_OFFLINE_PHASE_DELAY="0.5")
    async with running_stack(settings) as stack, open_page(browser, stack, key=None) as page:
        # Asked for a key once; a wrong one is refused with the server's detail.
        await page.goto("/")
        await page.get_by_label("API key").fill("not-a-key")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.locator("form [data-ref=error]")).to_contain_text("not valid")
        await screenshots.take(page, "sign-in")
        # The link `kiln up` prints stores the key and leaves the URL.
        await page.goto(f"/#key={ALICE_KEY}")
        await expect(page.get_by_role("heading", name="New project")).to_be_visible()
        assert "key=" not in page.url
        assert await page.evaluate("localStorage.getItem('kiln.apiKey')") == ALICE_KEY

        # Inline validation: a JSON error with its place, then the server's problems.
        editor = page.get_by_label("Entity schema (JSON)")
        problems = page.locator("#schema-problems")
        await editor.fill('{"entities": [\n  {"name": }\n]}')
        await expect(problems).to_contain_text("line 2")
        bad = {"entities": [{"name": "product", "fields": [{"name": "Title", "type": "string"}]}]}
        await editor.fill(json.dumps(bad, indent=2))
        await page.get_by_role("button", name="Generate").click()
        await expect(problems).to_contain_text("entities[0].name")
        await expect(problems).to_contain_text("PascalCase")
        await expect(problems).to_contain_text("entities[0].fields[0].name")
        await expect(page.locator("form > [data-ref=error]")).to_contain_text(
            "The schema is not valid"
        )
        await screenshots.take(page, "schema-problems")
        await page.get_by_role("button", name="Reset to the example").click()
        await expect(problems).to_be_hidden()

        await page.get_by_role("button", name="Generate").click()
        await page.wait_for_url(re.compile(r"#/g/[\w-]+$"))
        generation_id = page.url.rsplit("/", 1)[-1]

        # Mid-generation: the bar, the phase, files appearing and readable.
        await wait_progress(page, 40)
        await page.locator("[data-ref=tree] li.file[data-path$='.py'] button").first.click()
        await expect(page.locator(".code-view code.hljs span").first).to_be_visible()
        assert await progress(page) < 100, "the generation finished before the screenshot"
        await expect(page.locator(".progress-label")).to_contain_text("%")
        mid = await screenshots.take(page, "mid-generation", full_page=False)
        screenshots.publish_for_readme(mid)

        await wait_finished(page)
        assert await progress(page) == 100
        await assert_page_matches_history(page, stack, generation_id)
        await expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")

        # The viewer reads a finished version from storage, highlighted.
        readme = page.locator("[data-ref=tree] li.file[data-path='README.md'] button")
        if await readme.count():
            await readme.click()
            await expect(page.locator(".viewer-path")).to_have_text("README.md")
        await screenshots.take(page, "completed")

        # The zip downloads and holds exactly the files listed.
        async with page.expect_download() as download_info:
            await page.get_by_role("button", name="Download zip").click()
        download = await download_info.value
        saved = tmp_path / download.suggested_filename
        await download.save_as(saved)
        assert saved.name.endswith("-v1.zip")
        with zipfile.ZipFile(saved) as archive:
            assert sorted(archive.namelist()) == sorted(await page_files(page))

        # The audit view lists every stored event.
        await page.locator("[data-ref=events-panel] > summary").click()
        await page.get_by_role("button", name="Show the stored audit log").click()
        events = await page_events(page)
        await expect(page.locator(".audit-table tbody tr")).to_have_count(len(events))
        await screenshots.take(page, "audit")

        # Readable at phone width: nothing wider than the screen.
        await page.set_viewport_size(PHONE)
        await page.locator("h1").first.scroll_into_view_if_needed()
        assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        await screenshots.take(page, "phone")


async def test_a_reload_mid_generation_restores_the_progress(
    tmp_path: Path, nats_server: Any, browser: Browser, screenshots: Screenshots
) -> None:
    settings = make_settings(tmp_path, nats_server.url, KILN_OFFLINE_PHASE_DELAY="0.4")
    async with running_stack(settings) as stack, open_page(browser, stack) as page:
        generation_id = await create_from_form(page)
        before = await wait_progress(page, 40)
        done_before = [name for name, state in await page_phases(page) if state == "done"]
        assert before < 100
        await screenshots.take(page, "before-reload")

        await page.reload()
        # The replay brings back at least what was shown, with every finished phase.
        await wait_progress(page, before, timeout=5_000)
        assert f"#/g/{generation_id}" in page.url
        done_after = [name for name, state in await page_phases(page) if state == "done"]
        assert done_after[: len(done_before)] == done_before
        await screenshots.take(page, "after-reload")

        await wait_finished(page)
        await assert_page_matches_history(page, stack, generation_id)
        await screenshots.take(page, "finished")


async def test_offline_and_back_resumes_without_duplicates_or_gaps(
    tmp_path: Path, nats_server: Any, browser: Browser, screenshots: Screenshots
) -> None:
    settings = make_settings(tmp_path, nats_server.url, KILN_OFFLINE_PHASE_DELAY="0.6")
    async with (
        running_stack(settings) as stack,
        open_page(browser, stack, watch_failure=True) as page,
    ):
        streams: list[str] = []
        page.on("request", lambda r: streams.append(r.url) if "/stream?" in r.url else None)
        generation_id = await create_from_form(page)
        await wait_progress(page, 20)

        await page.context.set_offline(True)
        await expect(page.locator("[data-ref=connection]")).to_contain_text("reconnecting")
        await asyncio.sleep(1.5)
        await screenshots.take(page, "offline")
        status = (await stack.alice.get(f"/generations/{generation_id}")).json()
        assert status["status"] == "running", "the network came back after the end"
        await page.context.set_offline(False)

        await wait_finished(page)
        await assert_page_matches_history(page, stack, generation_id)
        await expect(page.locator("[data-ref=connection]")).to_be_hidden()
        assert any(re.search(r"last_event_id=[1-9]", url) for url in streams), streams
        assert await page.evaluate("window.__kilnEarlyFailure") is None
        await screenshots.take(page, "resumed")


async def test_iterate_from_any_version_and_see_the_diff(
    tmp_path: Path, nats_server: Any, browser: Browser, screenshots: Screenshots
) -> None:
    settings = make_settings(tmp_path, nats_server.url)
    async with running_stack(settings) as stack, open_page(browser, stack) as page:
        first = await stack.create()
        v1 = first["generation_id"]
        await stack.wait_status(v1, "completed")
        await page.goto(f"/#/g/{v1}")
        await wait_finished(page)

        # Lock a file with the keyboard, describe the change, submit with the keyboard.
        locked = "README.md"
        checkbox = page.get_by_role("checkbox", name=f"Lock {locked}")
        await checkbox.focus()
        await page.keyboard.press("Space")
        await expect(checkbox).to_be_checked()
        await expect(page.locator("[data-ref=locked-summary]")).to_contain_text(locked)
        await page.get_by_label("What should change?").fill("add pagination")
        await page.get_by_label("What should change?").focus()
        await page.keyboard.press("Tab")
        await page.keyboard.press("Enter")
        await page.wait_for_url(re.compile(rf"#/g/(?!{v1})[\w-]+$"))
        v2 = page.url.rsplit("/", 1)[-1]
        await wait_finished(page)
        await assert_page_matches_history(page, stack, v2)

        # The diff against v1: per-file status, +/- lines, the locked file untouched.
        diff = page.locator("[data-ref=diff-panel]")
        await expect(diff).to_be_visible()
        await expect(page.locator("[data-ref=diff-parent]")).to_have_text("v1")
        await expect(diff.locator(".diff-file").first).to_be_visible()
        assert await diff.locator(".diff-file[data-status=modified]").count() >= 1
        assert await diff.locator("pre.diff span.add").count() >= 1
        assert await diff.locator(f".diff-file[data-path='{locked}']").count() == 0
        await expect(page.locator("[data-ref=diff-summary]")).to_contain_text("modified")
        await screenshots.take(page, "diff")

        # Iterate from v1 again: the versions form a tree (v2 and v3 both under v1).
        await page.locator(f"[data-ref=versions] a[href='#/g/{v1}']").click()
        await page.wait_for_url(re.compile(rf"#/g/{v1}$"))
        await wait_finished(page)
        await page.get_by_label("What should change?").fill("add authentication")
        await page.get_by_role("button", name="Generate the new version").click()
        await page.wait_for_url(re.compile(rf"#/g/(?!{v1})[\w-]+$"))
        v3 = page.url.rsplit("/", 1)[-1]
        assert v3 != v2
        await wait_finished(page)
        tree = page.locator("[data-ref=versions]")
        root = tree.locator(f"li[data-generation='{v1}']")
        await expect(root.locator(f"li[data-generation='{v2}']")).to_be_visible()
        await expect(root.locator(f"li[data-generation='{v3}']")).to_contain_text("v3")
        await expect(tree.locator("a[aria-current=page]")).to_have_text("v3")
        await screenshots.take(page, "versions")

        # The projects list picks the work up again.
        await page.get_by_role("link", name="Projects").click()
        await expect(page.locator(".project")).to_have_count(1)
        await expect(page.locator(".project li[data-generation]")).to_have_count(3)
        await screenshots.take(page, "projects")


class FailsInSchemas:
    """The offline provider, slowed down, except that the schemas phase fails."""

    name = "offline"

    def __init__(self) -> None:
        self.inner = OfflineProvider(phase_delay_s=0.4)

    async def run_phase(self, request: PhaseRequest, reporter: Reporter):  # type: ignore[no-untyped-def]
        if request.phase == "schemas":
            await asyncio.sleep(1.5)
            raise ProviderError("the model refused to write the schemas (scripted failure)")
        return await self.inner.run_phase(request, reporter)


async def test_a_failure_is_shown_only_when_its_event_arrives(
    tmp_path: Path, nats_server: Any, browser: Browser, screenshots: Screenshots
) -> None:
    settings = make_settings(tmp_path, nats_server.url)
    async with (
        running_stack(settings, providers={"offline": FailsInSchemas()}) as stack,
        open_page(browser, stack, watch_failure=True) as page,
    ):
        generation_id = await create_from_form(page)
        await wait_progress(page, 5)
        # A network drop while it runs says "reconnecting", never "failed".
        await page.context.set_offline(True)
        await expect(page.locator("[data-ref=connection]")).to_contain_text("reconnecting")
        await screenshots.take(page, "running-offline")
        await asyncio.sleep(0.5)
        await page.context.set_offline(False)
        looked = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = await page.evaluate(
                """() => ({
                  text: document.body.innerText,
                  arrived: !!document.querySelector('[data-type="generation.failed"]'),
                })"""
            )
            if seen["arrived"]:
                break
            assert "failed" not in seen["text"].lower()
            looked += 1
            await asyncio.sleep(0.05)
        assert looked > 5, "the page was not seen running"
        assert await page.evaluate("window.__kilnEarlyFailure") is None

        failure = page.locator("[data-ref=failure]")
        await expect(failure).to_be_visible()
        await expect(failure).to_contain_text("scripted failure")
        await expect(failure).to_contain_text("failed in the schemas phase")
        await wait_finished(page, "failed")
        events = await history(stack, generation_id)
        kept = sorted(files_of(events))
        assert kept, "the earlier phases wrote files"
        shown = await failure.locator("[data-ref=failure-files] li").all_inner_texts()
        assert shown == kept
        await expect(page.get_by_role("button", name="Download zip")).to_be_visible()
        assert await page_events(page) == [(e.id, e.data["seq"], e.type) for e in events]
        await screenshots.take(page, "failed")


async def test_an_expired_token_is_renewed_and_the_stream_resumes(
    tmp_path: Path, nats_server: Any, browser: Browser, screenshots: Screenshots
) -> None:
    settings = make_settings(
        tmp_path, nats_server.url, KILN_OFFLINE_PHASE_DELAY="0.5", KILN_SSE_TOKEN_TTL="1"
    )
    async with running_stack(settings) as stack, open_page(browser, stack) as page:
        responses: list[tuple[float, str, str, int]] = []
        page.on(
            "response",
            lambda r: responses.append((time.monotonic(), r.request.method, r.url, r.status)),
        )
        generation_id = await create_from_form(page)
        await wait_progress(page, 20)

        await page.context.set_offline(True)
        await asyncio.sleep(2)  # the token the stream was opened with expires
        back_online = time.monotonic()
        await page.context.set_offline(False)

        await wait_finished(page)
        await assert_page_matches_history(page, stack, generation_id)
        after = [(method, url, status) for at, method, url, status in responses if at > back_online]
        refused = [url for method, url, status in after if "/stream?" in url and status == 401]
        renewed = [
            url
            for method, url, status in after
            if method == "POST" and url.endswith("/stream-token") and status == 200
        ]
        assert refused, f"the expired token was not refused: {after}"
        assert renewed, f"no fresh token after the refusal: {after}"
        await screenshots.take(page, "renewed")
