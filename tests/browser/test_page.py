"""The web page in a real headless Chromium against a real running Kiln stack.

Each test drives the page as a person would and checks what it shows against the
generation's own SSE history (read separately over HTTP): the page never invents, drops
or doubles an event, and never says "failed" before a `generation.failed` event.

The scripted provider lets a test hold a phase, so "mid-generation" is a state the test
sets up, not a moment it hopes to catch.
"""

from __future__ import annotations

import contextlib
import json
import re
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, Request, expect

from contracts.phases import PHASE_NAMES
from tests.browser.conftest import Screenshots
from tests.browser.scripted import ScriptedProvider
from tests.conftest import ALICE_KEY, make_settings
from tests.support import client as kiln
from tests.support.stack import SSEEvent, Stack, running_stack, schema_with

DESKTOP = {"width": 1280, "height": 720}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 30_000
expect.set_options(timeout=WAIT_MS)

# Records the page's text the first time it says "failed" while no generation.failed
# event is in its event log: checked on every change of the DOM, not only when the test
# happens to look.
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
    context.set_default_timeout(WAIT_MS)
    if key:
        await context.add_init_script(f"localStorage.setItem('kiln.apiKey', {json.dumps(key)})")
    if watch_failure:
        await context.add_init_script(EARLY_FAILURE_WATCH)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: (
            errors.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    try:
        yield page
    finally:
        await context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


async def create_from_form(
    page: Page, name: str = "shop", schema: dict[str, Any] | None = None, prompt: str = ""
) -> str:
    """Submit the create form with the example schema and prompt (or `schema` and `prompt`,
    typed in); the new generation's id."""
    await page.goto("/#/")
    await page.get_by_label("Project name").fill(name)
    if schema is not None:
        await page.get_by_label("Entity schema (JSON)").fill(json.dumps(schema, indent=2))
    if prompt:
        await page.get_by_label("What is the project for?").fill(prompt)
    await page.get_by_role("button", name="Generate").click()
    await page.wait_for_url(re.compile(r"#/g/[\w-]+$"))
    return page.url.rsplit("/", 1)[-1]


async def progress(page: Page) -> int:
    """What the progress bar says (aria-valuenow)."""
    return int(await page.get_by_role("progressbar").get_attribute("aria-valuenow") or 0)


async def wait_progress(page: Page, percent: int) -> None:
    """Wait until the progress bar shows exactly `percent`."""
    await expect(page.get_by_role("progressbar")).to_have_attribute(
        "aria-valuenow", str(percent), timeout=WAIT_MS
    )


async def wait_running(page: Page, phase: str, percent: int) -> None:
    """Wait until the page shows `phase` running at `percent` (its phase.started arrived)."""
    await expect(page.locator(f"[data-ref=timeline] li[data-phase={phase}]")).to_have_attribute(
        "data-state", "running"
    )
    await wait_progress(page, percent)


async def wait_finished(page: Page, status: str = "completed") -> None:
    """Wait for the page to show the generation's terminal status."""
    await expect(page.locator("[data-ref=status]")).to_have_text(status, timeout=WAIT_MS)


async def page_events(page: Page) -> list[tuple[int, int, str]]:
    """The page's event log: (SSE id, seq, type) of every entry, in order."""
    rows = await page.locator("[data-ref=events] li").evaluate_all(
        "items => items.map(li => [Number(li.dataset.id), Number(li.dataset.seq), li.dataset.type])"
    )
    return [(int(i), int(seq), str(kind)) for i, seq, kind in rows]


async def page_phases(page: Page) -> list[tuple[str, str]]:
    """The phase timeline: (phase, state) of every entry, in order."""
    rows = await page.locator("[data-ref=timeline] li[data-phase]").evaluate_all(
        "items => items.map(li => [li.dataset.phase, li.dataset.state])"
    )
    return [(str(phase), str(state)) for phase, state in rows]


async def page_files(page: Page) -> list[str]:
    """The paths in the file tree."""
    return await page.locator("[data-ref=tree] li.file").evaluate_all(
        "items => items.map(li => li.dataset.path)"
    )


async def history(stack: Stack, generation_id: str) -> list[SSEEvent]:
    """The generation's whole SSE history, read over HTTP with the API key."""
    return await kiln.read_events(stack.alice, f"/generations/{generation_id}/stream", timeout=30)


def files_of(events: list[SSEEvent]) -> list[str]:
    """The files a generation's events leave, sorted: written or inherited by manifest
    (`version.based_on`), and not deleted since."""
    files: set[str] = set()
    for event in events:
        if event.type == "file.written":
            files.add(event.data["path"])
        elif event.type == "version.based_on":
            files.update(f["path"] for f in event.data["files"])
        elif event.type == "file.deleted":
            files.discard(event.data["path"])
    return sorted(files)


async def assert_page_matches_history(page: Page, stack: Stack, generation_id: str) -> None:
    """The page's event log is the SSE history exactly (no duplicate, no gap), every phase
    is in the timeline once and done, and the file tree holds the version's files."""
    events = await history(stack, generation_id)
    shown = await page_events(page)
    assert shown == [(e.id, e.data["seq"], e.type) for e in events]
    assert [seq for _, seq, _ in shown] == list(range(1, len(events) + 1))
    assert await page_phases(page) == [(name, "done") for name in PHASE_NAMES]
    assert sorted(await page_files(page)) == files_of(events)


def stream_requests(page: Page) -> list[str]:
    """The URLs of the SSE requests the page makes from now on (a live list)."""
    urls: list[str] = []

    def record(request: Request) -> None:
        if "/stream?" in request.url:
            urls.append(request.url)

    page.on("request", record)
    return urls


async def test_sign_in_create_watch_and_download(
    tmp_path: Path, nats_server: Any, browser: Browser, screenshots: Screenshots
) -> None:
    provider = ScriptedProvider(phase_delay_s=0.2, rate_limited_in="models")
    settings = make_settings(tmp_path, nats_server.url)
    async with (
        running_stack(settings, providers={"offline": provider}) as stack,
        open_page(browser, stack, key=None, watch_failure=True) as page,
    ):
        # Asked for a key once; a wrong one is refused with the server's words.
        await page.goto("/")
        await page.get_by_label("API key").fill("not-a-key")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.locator("form [data-ref=error]")).to_contain_text("not valid")
        await screenshots.take(page, "sign-in")
        # The link `kiln up` prints keeps the key in the browser and leaves the URL.
        await page.goto(f"/#key={ALICE_KEY}")
        await expect(page.get_by_role("heading", name="New project")).to_be_visible()
        assert "key=" not in page.url
        assert await page.evaluate("localStorage.getItem('kiln.apiKey')") == ALICE_KEY

        # Inline validation: a JSON error with its place, then the server's problems.
        editor = page.get_by_label("Entity schema (JSON)")
        problems = page.locator("#schema-problems")
        await editor.fill('{"entities": [\n  {"name": }\n]}')
        await expect(problems).to_contain_text("line 2")
        await expect(editor).to_have_attribute("aria-invalid", "true")
        bad = {"entities": [{"name": "product", "fields": [{"name": "Title", "type": "string"}]}]}
        await editor.fill(json.dumps(bad, indent=2))
        await page.get_by_role("button", name="Generate").click()
        await expect(problems).to_contain_text("entities[0].name")
        await expect(problems).to_contain_text("entities[0].fields[0].name")
        await expect(page.locator("form > [data-ref=error]")).to_contain_text(
            "The schema is not valid"
        )
        await screenshots.take(page, "schema-problems")
        await page.get_by_role("button", name="Reset to the example").click()
        await expect(problems).to_be_hidden()

        # By keyboard: from the provider choice to the button, and Enter.
        provider.hold("api")
        await page.get_by_role("radio", name=re.compile(r"^offline")).focus()
        await page.keyboard.press("Tab")
        await expect(page.get_by_role("button", name="Generate")).to_be_focused()
        await page.keyboard.press("Enter")
        await page.wait_for_url(re.compile(r"#/g/[\w-]+$"))
        generation_id = page.url.rsplit("/", 1)[-1]

        # A rate limit on the way says so, with its countdown.
        await expect(page.locator("[data-ref=retry]")).to_contain_text(
            re.compile(r"Rate limited, retrying in \d s")
        )
        await screenshots.take(page, "rate-limited", full_page=False)

        # Mid-generation: the bar, the phase, files appearing and readable.
        await wait_running(page, "api", 40)
        await expect(page.locator(".progress-label")).to_contain_text("40% api")
        await expect(page.locator("[data-ref=usage]")).to_contain_text(re.compile(r"Tokens\d+ in"))
        await page.locator("[data-ref=tree] li.file[data-path='app/models.py'] button").click()
        await expect(page.locator(".code-view code.hljs span").first).to_be_visible()
        mid = await screenshots.take(page, "mid-generation", full_page=False)
        screenshots.publish_for_readme(mid)
        await page.set_viewport_size(PHONE)
        await screenshots.take(page, "mid-generation-phone", full_page=False)
        await page.set_viewport_size(DESKTOP)

        provider.release("api")
        await wait_finished(page)
        assert await progress(page) == 100
        await assert_page_matches_history(page, stack, generation_id)
        await expect(page.locator("[data-ref=completed]")).to_contain_text("complete")
        await expect(page.locator("[data-ref=retry]")).to_be_hidden()
        await screenshots.take(page, "completed")

        # The zip downloads and holds exactly the files listed.
        async with page.expect_download() as download_info:
            await page.get_by_role("button", name="Download zip").click()
        download = await download_info.value
        saved = tmp_path / download.suggested_filename
        await download.save_as(saved)
        assert saved.name == "shop-v1.zip"
        with zipfile.ZipFile(saved) as archive:
            assert sorted(archive.namelist()) == sorted(await page_files(page))
            assert archive.read("README.md").startswith(b"# shop")

        # The audit view lists every stored event.
        await page.locator("[data-ref=events-panel] > summary").click()
        await page.get_by_role("button", name="Show the stored audit log").click()
        await expect(page.locator(".audit-table tbody tr")).to_have_count(
            len(await page_events(page))
        )
        await screenshots.take(page, "audit")

        # Readable at phone width: nothing wider than the screen.
        await page.set_viewport_size(PHONE)
        assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        await screenshots.take(page, "completed-phone")
        assert await page.evaluate("window.__kilnEarlyFailure") is None


async def test_a_reload_mid_generation_restores_the_progress(
    tmp_path: Path, nats_server: Any, browser: Browser, screenshots: Screenshots
) -> None:
    provider = ScriptedProvider(phase_delay_s=0.1)
    settings = make_settings(tmp_path, nats_server.url)
    async with (
        running_stack(settings, providers={"offline": provider}) as stack,
        open_page(browser, stack) as page,
    ):
        provider.hold("tests")
        generation_id = await create_from_form(page)
        await wait_running(page, "tests", 60)
        before = (await page_phases(page), await page_files(page), await page_events(page))
        await screenshots.take(page, "before-reload", full_page=False)

        await page.reload()
        # The replay brings back exactly what was shown.
        await wait_progress(page, 60)
        assert f"#/g/{generation_id}" in page.url
        await expect(page.locator("[data-ref=events] li")).to_have_count(len(before[2]))
        after = (await page_phases(page), await page_files(page), await page_events(page))
        assert after == before
        assert ("tests", "running") in after[0]
        await screenshots.take(page, "after-reload", full_page=False)

        provider.release("tests")
        await wait_finished(page)
        await assert_page_matches_history(page, stack, generation_id)
        await screenshots.take(page, "finished", full_page=False)


async def test_offline_and_back_resumes_without_duplicates_or_gaps(
    tmp_path: Path, nats_server: Any, browser: Browser, screenshots: Screenshots
) -> None:
    provider = ScriptedProvider(phase_delay_s=0.1)
    settings = make_settings(tmp_path, nats_server.url)
    async with (
        running_stack(settings, providers={"offline": provider}) as stack,
        open_page(browser, stack, watch_failure=True) as page,
    ):
        streams = stream_requests(page)
        failed: list[str] = []
        page.on("requestfailed", lambda r: failed.append(r.url) if "/stream?" in r.url else None)
        provider.hold("api")
        generation_id = await create_from_form(page)
        await wait_running(page, "api", 40)

        await page.context.set_offline(True)
        await expect(page.locator("[data-ref=connection]")).to_contain_text("reconnecting")
        # The generation goes on while the page is offline; events it misses pile up.
        provider.hold("docs")
        provider.release("api")
        await provider.reached("docs")
        await screenshots.take(page, "offline", full_page=False)
        assert await progress(page) == 40, "events arrived while offline"
        await page.context.set_offline(False)

        await wait_progress(page, 80)
        provider.release("docs")
        await wait_finished(page)
        await assert_page_matches_history(page, stack, generation_id)
        await expect(page.locator("[data-ref=connection]")).to_be_hidden()
        assert any(re.search(r"last_event_id=[1-9]", url) for url in streams), streams
        assert await page.evaluate("window.__kilnEarlyFailure") is None
        await screenshots.take(page, "resumed", full_page=False)


async def test_iterate_from_any_version_and_see_the_diff(
    tmp_path: Path, nats_server: Any, browser: Browser, screenshots: Screenshots
) -> None:
    provider = ScriptedProvider()
    settings = make_settings(tmp_path, nats_server.url)
    async with (
        running_stack(settings, providers={"offline": provider}) as stack,
        open_page(browser, stack) as page,
    ):
        v1 = (await stack.create_completed())["generation_id"]
        await page.goto(f"/#/g/{v1}")
        await wait_finished(page)

        # By keyboard: lock a file, describe the change, submit.
        locked = "README.md"
        checkbox = page.get_by_role("checkbox", name=f"Lock {locked}")
        await checkbox.focus()
        await page.keyboard.press("Space")
        await expect(checkbox).to_be_checked()
        await expect(page.locator("[data-ref=locked-summary]")).to_contain_text(locked)
        await page.get_by_label("What should change?").focus()
        await page.keyboard.type("add a changelog")
        await page.keyboard.press("Tab")
        await expect(page.get_by_role("button", name="Generate the new version")).to_be_focused()
        await page.keyboard.press("Enter")
        await page.wait_for_url(re.compile(rf"#/g/(?!{v1})[\w-]+$"))
        v2 = page.url.rsplit("/", 1)[-1]
        await wait_finished(page)
        await assert_page_matches_history(page, stack, v2)

        # The diff against v1: per-file status, +/- lines, the locked file untouched.
        diff = page.locator("[data-ref=diff-panel]")
        await expect(diff).to_be_visible()
        await expect(page.locator("[data-ref=diff-parent]")).to_have_text("v1")
        await expect(diff.locator(".diff-file[data-path='CHANGES.md']")).to_have_attribute(
            "data-status", "added"
        )
        modified = diff.locator(".diff-file[data-path='app/api.py']")
        await expect(modified).to_have_attribute("data-status", "modified")
        await expect(modified.locator("pre.diff")).to_contain_text("+# change: add a changelog")
        assert await diff.locator(f".diff-file[data-path='{locked}']").count() == 0
        await expect(page.locator("[data-ref=diff-summary]")).to_contain_text("1 added")
        await screenshots.take(page, "diff")

        # Iterate from v1 again: the versions form a tree (v2 and v3 both under v1).
        await page.locator(f"[data-ref=versions] a[href='#/g/{v1}']").click()
        await page.wait_for_url(re.compile(rf"#/g/{v1}$"))
        await wait_finished(page)
        await page.get_by_label("What should change?").fill("add pagination")
        await page.get_by_role("button", name="Generate the new version").click()
        await page.wait_for_url(re.compile(rf"#/g/(?!{v1}|{v2})[\w-]+$"))
        v3 = page.url.rsplit("/", 1)[-1]
        await wait_finished(page)
        tree = page.locator("[data-ref=versions]")
        root = tree.locator(f"li[data-generation='{v1}']")
        await expect(root.locator(f"li[data-generation='{v2}']")).to_contain_text("v2")
        await expect(root.locator(f"li[data-generation='{v3}']")).to_contain_text("v3")
        await expect(tree.locator("a[aria-current=page]")).to_have_text("v3")
        await screenshots.take(page, "versions")

        # The projects list picks the work up again.
        await page.get_by_role("link", name="Projects").click()
        await expect(page.locator(".project")).to_have_count(1)
        await expect(page.locator(".project li[data-generation]")).to_have_count(3)
        await screenshots.take(page, "projects")


async def test_a_failure_is_shown_only_when_its_event_arrives(
    tmp_path: Path, nats_server: Any, browser: Browser, screenshots: Screenshots
) -> None:
    provider = ScriptedProvider(phase_delay_s=0.1, fail_in="schemas")
    settings = make_settings(tmp_path, nats_server.url)
    async with (
        running_stack(settings, providers={"offline": provider}) as stack,
        open_page(browser, stack, watch_failure=True) as page,
    ):
        provider.hold("schemas")
        generation_id = await create_from_form(page)
        await wait_running(page, "schemas", 20)
        # A network drop while it runs says "reconnecting", never "failed".
        await page.context.set_offline(True)
        await expect(page.locator("[data-ref=connection]")).to_contain_text("reconnecting")
        await screenshots.take(page, "running-offline", full_page=False)
        await page.context.set_offline(False)
        await expect(page.locator("[data-ref=connection]")).to_be_hidden()
        assert "failed" not in (await page.locator("body").inner_text()).lower()

        provider.release("schemas")
        failure = page.locator("[data-ref=failure]")
        await expect(failure).to_be_visible()
        assert await page.evaluate("window.__kilnEarlyFailure") is None
        await expect(failure).to_contain_text("scripted failure")
        await expect(failure).to_contain_text("failed in the schemas phase")
        await wait_finished(page, "failed")
        await expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "20")
        events = await history(stack, generation_id)
        assert events[-1].type == "generation.failed"
        kept = files_of(events)
        assert kept, "the earlier phases wrote files"
        await expect(failure.locator("[data-ref=failure-files] li")).to_have_text(kept)
        assert sorted(await page_files(page)) == kept
        await expect(page.get_by_role("button", name="Download zip")).to_be_visible()
        assert await page_events(page) == [(e.id, e.data["seq"], e.type) for e in events]
        states = dict(await page_phases(page))
        assert states["models"] == "done"
        assert states["schemas"] == "stopped"
        assert states["verify"] == "waiting"
        await screenshots.take(page, "failed")


async def test_cancel_stops_the_generation_and_keeps_its_files(
    tmp_path: Path, nats_server: Any, browser: Browser, screenshots: Screenshots
) -> None:
    provider = ScriptedProvider()
    settings = make_settings(tmp_path, nats_server.url)
    async with (
        running_stack(settings, providers={"offline": provider}) as stack,
        open_page(browser, stack) as page,
    ):
        provider.hold("schemas")
        generation_id = await create_from_form(page)
        await wait_running(page, "schemas", 20)
        await page.get_by_role("button", name="Cancel").click()
        await wait_finished(page, "cancelled")
        await expect(page.locator("[data-ref=cancelled]")).to_contain_text("Cancelled by alice")
        await expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
        events = await history(stack, generation_id)
        assert events[-1].type == "generation.cancelled"
        assert sorted(await page_files(page)) == files_of(events)
        assert await page_events(page) == [(e.id, e.data["seq"], e.type) for e in events]
        await screenshots.take(page, "cancelled", full_page=False)


async def test_an_expired_token_is_renewed_and_the_stream_resumes(
    tmp_path: Path, nats_server: Any, browser: Browser, screenshots: Screenshots
) -> None:
    provider = ScriptedProvider(phase_delay_s=0.1)
    settings = make_settings(tmp_path, nats_server.url, KILN_SSE_TOKEN_TTL="1")
    async with (
        running_stack(settings, providers={"offline": provider}) as stack,
        open_page(browser, stack) as page,
    ):
        responses: list[tuple[str, str, int]] = []
        streams = stream_requests(page)
        provider.hold("api")
        generation_id = await create_from_form(page)
        await wait_running(page, "api", 40)

        await page.context.set_offline(True)
        await expect(page.locator("[data-ref=connection]")).to_contain_text("reconnecting")
        # While offline, the token the stream was opened with expires (a 1 s lifetime).
        provider.release("api")
        await provider.reached("docs")
        page.on("response", lambda r: responses.append((r.request.method, r.url, r.status)))
        await page.wait_for_timeout(1_100)
        await page.context.set_offline(False)

        await wait_finished(page)
        await assert_page_matches_history(page, stack, generation_id)
        refused = [url for _, url, status in responses if "/stream?" in url and status == 401]
        renewed = [
            url
            for method, url, status in responses
            if method == "POST" and url.endswith("/stream-token") and status == 200
        ]
        assert refused, f"the expired token was not refused: {responses}"
        assert renewed, f"no fresh token after the refusal: {responses}"
        assert re.search(r"last_event_id=[1-9]", streams[-1]), streams
        await screenshots.take(page, "renewed", full_page=False)


def _offline_provider_exists() -> bool:
    try:
        from services.orchestrator.providers.offline import OfflineProvider  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _offline_provider_exists(), reason="the offline provider is not there yet")
async def test_the_offline_provider_adds_authentication(
    tmp_path: Path, nats_server: Any, browser: Browser, screenshots: Screenshots
) -> None:
    settings = make_settings(tmp_path, nats_server.url)
    async with running_stack(settings) as stack, open_page(browser, stack) as page:
        v1 = (await stack.create_completed())["generation_id"]
        await page.goto(f"/#/g/{v1}")
        await wait_finished(page)
        # The prompts the offline provider understands are offered as examples.
        await page.get_by_role("button", name="add authentication", exact=True).click()
        prompt = page.get_by_label("What should change?")
        await expect(prompt).to_have_value("add authentication")
        await expect(prompt).to_be_focused()
        await page.get_by_role("button", name="Generate the new version").click()
        await page.wait_for_url(re.compile(rf"#/g/(?!{v1})[\w-]+$"))
        v2 = page.url.rsplit("/", 1)[-1]
        await wait_finished(page)
        await assert_page_matches_history(page, stack, v2)
        diff = page.locator("[data-ref=diff-panel]")
        await expect(diff.locator(".diff-file").first).to_be_visible()
        assert await diff.locator(".diff-file[data-status=added]").count() >= 1
        response = await stack.alice.get(f"/generations/{v2}/diff")
        shown = await diff.locator(".diff-file").evaluate_all("n => n.map(d => d.dataset.path)")
        assert shown == [f["path"] for f in response.json()["files"]]
        await screenshots.take(page, "offline-provider-diff")


@pytest.mark.parametrize("name", ["商店", "\u0455hop"])
async def test_the_download_button_saves_any_valid_project_name(
    tmp_path: Path, nats_server: Any, browser: Browser, name: str
) -> None:
    async with running_stack(make_settings(tmp_path, nats_server.url)) as stack:
        accepted = await stack.create_completed(project_name=name)
        async with open_page(browser, stack) as page:
            await page.goto(f"/#/g/{accepted['generation_id']}")
            await wait_finished(page)
            async with page.expect_download() as download_info:
                await page.get_by_role("button", name="Download zip").click()
            download = await download_info.value
            assert download.suggested_filename == f"{name}-v1.zip"
            saved = tmp_path / "saved.zip"
            await download.save_as(saved)
            assert zipfile.ZipFile(saved).testzip() is None


# Records what the page shows of the verify step on every change of the DOM: the step's
# state in the timeline and the verification badge (None while the panel is hidden), so
# "it said running while the verifier worked" is checked, not sampled.
VERIFY_HISTORY = """
window.__kilnVerify = [];
new MutationObserver(() => {
  const step = document.querySelector('[data-ref=timeline] li[data-phase=verify]');
  const badge = document.querySelector('[data-ref="verification-badge"]');
  const shown = [
    step ? step.dataset.state : null,
    badge && !badge.closest('[hidden]') ? badge.textContent : null,
  ];
  const seen = window.__kilnVerify;
  const last = seen[seen.length - 1];
  if (!last || last[0] !== shown[0] || last[1] !== shown[1]) seen.push(shown);
}).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
"""


def verification_line(completed: dict[str, Any]) -> str:
    """The counts a `verify.completed` event carries, in the page's words (model.js's
    verificationLine): "tests: 120 passed · lint: clean · format: clean"."""
    counts = [f"{completed['passed']} passed"]
    for key in ("failed", "errors", "skipped"):
        if completed[key]:
            counts.append(f"{completed[key]} {key}")
    lint = f"{completed['lint_findings']} findings" if completed["lint_findings"] else "clean"
    reformat = completed["format_findings"]
    formatting = f"{reformat} files to reformat" if reformat else "clean"
    return f"tests: {', '.join(counts)} · lint: {lint} · format: {formatting}"


# A 20-entity project (the acceptance's size, as tests/e2e/test_verification.py): its
# sandboxed run takes 15-60 s on a loaded machine, so the waits for it are generous.
VERIFY_WAIT_MS = 240_000


@pytest.mark.timeout(420)
@pytest.mark.one_database
async def test_a_20_entity_projects_own_tests_are_shown_live_and_after_a_reload(
    tmp_path: Path, nats_server: Any, browser: Browser, screenshots: Screenshots
) -> None:
    # (the sandbox's own wall-clock limit raised too, so a slow machine is not a timeout)
    settings = make_settings(
        tmp_path, nats_server.url, KILN_VERIFY_PICKUP="30", KILN_VERIFY_TIMEOUT="240"
    )
    async with (
        running_stack(settings, verifier=True) as stack,
        open_page(browser, stack) as page,
    ):
        await page.add_init_script(VERIFY_HISTORY)
        await page.evaluate(VERIFY_HISTORY)
        generation_id = await create_from_form(
            page, "twenty", schema_with(20), "Twenty entities, each one under the one before."
        )
        await expect(page.locator("[data-ref=status]")).to_have_text(
            "completed", timeout=VERIFY_WAIT_MS
        )
        events = await history(stack, generation_id)
        verify = [e for e in events if e.type.startswith("verify.")]
        assert [e.type for e in verify] == ["verify.started", "verify.completed"], verify
        completed = verify[-1].data
        assert completed["verdict"] == "passed", completed
        assert completed["failed"] == completed["errors"] == 0
        assert completed["lint_findings"] == completed["format_findings"] == 0
        assert completed["passed"] >= 20 * 5, "every entity's tests ran"
        status = (await stack.alice.get(f"/generations/{generation_id}")).json()
        assert status["verification"]["status"] == "passed", status["verification"]
        assert status["verification"]["passed"] == completed["passed"]

        # Live: the step ran with the badge saying so while the verifier worked, then the
        # verdict, with the counts of the log's verify.completed.
        shown = [tuple(entry) for entry in await page.evaluate("window.__kilnVerify")]
        assert ("running", "running…") in shown, shown
        assert shown[-1] == ("done", "passed"), shown
        badges = [badge for _, badge in shown if badge is not None]
        assert [b for i, b in enumerate(badges) if not i or badges[i - 1] != b] == [
            "running…",
            "passed",
        ], shown
        line = verification_line(completed)
        panel = page.locator("[data-ref=verification]")
        await expect(panel.locator("[data-ref=verification-badge]")).to_have_text("passed")
        await expect(panel.locator("[data-ref=verification-line]")).to_contain_text(line)
        await expect(panel.locator("[data-ref=verification-failures] li")).to_have_count(0)
        await expect(
            page.locator("[data-ref=events] li[data-type='verify.completed']")
        ).to_contain_text(f"Tests passed: {line}")
        version = page.locator(f"[data-ref=versions] li[data-generation='{generation_id}']")
        await expect(version.locator(".badge[data-verdict]")).to_have_text("tests passed")
        await screenshots.take(page, "verified", full_page=False)

        # After a reload (a replay of the log): the same verdict and counts.
        await page.reload()
        await expect(panel.locator("[data-ref=verification-badge]")).to_have_text("passed")
        await expect(panel.locator("[data-ref=verification-line]")).to_contain_text(line)
        await expect(version.locator(".badge[data-verdict]")).to_have_text("tests passed")
        await assert_page_matches_history(page, stack, generation_id)

        # The download holds the version's files: every entity's code and tests.
        async with page.expect_download() as download_info:
            await page.get_by_role("button", name="Download zip").click()
        download = await download_info.value
        saved = tmp_path / download.suggested_filename
        await download.save_as(saved)
        assert saved.name == "twenty-v1.zip"
        with zipfile.ZipFile(saved) as archive:
            names = sorted(archive.namelist())
            assert archive.read("README.md").startswith(b"# twenty")
        assert names == sorted(await page_files(page)) == files_of(events)
        for i in range(20):
            assert {f"app/models/entity{i}.py", f"tests/test_entity{i}.py"} <= set(names)
