"""Repair rounds on the page, in a real Chromium against a real stack with a real verifier:
the rounds appear live, a reload mid-round shows the same state, and the diff of a repaired
iteration marks the files the repair changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from playwright.async_api import Browser, expect

from contracts.phases import GeneratedFile
from services.orchestrator.providers.base import PhaseRequest
from tests.browser.conftest import Screenshots
from tests.browser.scripted import FILES_BY_PHASE, ScriptedProvider
from tests.browser.test_page import create_from_form, open_page, wait_finished
from tests.conftest import make_settings
from tests.support.stack import running_stack

# Repair rounds prove the same on either database: the `verification` column, its repair
# rounds included, is stored and read back on SQLite and PostgreSQL by
# tests/storage/test_verification.py and by test_rows.py's fold table (its repair cases).
pytestmark = [pytest.mark.timeout(240), pytest.mark.one_database]

BUGGY_API = FILES_BY_PHASE["api"]["app/api.py"].replace("return []", "return [1]")


class RepairingProvider(ScriptedProvider):
    """The scripted phases with a bug in the API, fixed by its repair round."""

    repairs = True

    def _files(self, request: PhaseRequest) -> list[GeneratedFile]:
        if request.phase == "api":
            return [GeneratedFile("app/api.py", BUGGY_API)]
        if request.phase == "repair":
            return [GeneratedFile("app/api.py", FILES_BY_PHASE["api"]["app/api.py"])]
        return super()._files(request)


class IterationRepairingProvider(ScriptedProvider):
    """Creates a passing version; an iteration's API breaks its test, and the repair
    round fixes it (keeping the iteration's note in the file)."""

    repairs = True

    def _files(self, request: PhaseRequest) -> list[GeneratedFile]:
        if request.kind == "iterate" and request.phase == "api":
            return [GeneratedFile("app/api.py", BUGGY_API)]
        if request.phase == "repair":
            fixed = FILES_BY_PHASE["api"]["app/api.py"] + f"\n# change: {request.prompt}\n"
            return [GeneratedFile("app/api.py", fixed)]
        return super()._files(request)


async def test_repair_rounds_appear_live_and_survive_a_reload(
    tmp_path: Path, nats_server: Any, browser: Browser
) -> None:
    provider = RepairingProvider()
    settings = msgspec.structs.replace(
        make_settings(tmp_path, nats_server.url), verify_pickup_s=30.0
    )
    async with (
        running_stack(settings, providers={"offline": provider}, verifier=True) as stack,
        open_page(browser, stack) as page,
    ):
        provider.hold("repair")
        await create_from_form(page)
        await provider.reached("repair", timeout=120)
        section = page.locator("[data-ref=repairs]")
        await expect(section).to_be_visible()
        await expect(section.locator(".repair-headline")).to_have_text(
            "repairing: round 1, 1 test failing"
        )
        await expect(section.locator("li[data-round='1']")).to_have_attribute(
            "data-status", "running"
        )
        before = await section.inner_text()

        await page.reload()
        await expect(section.locator("li[data-round='1']")).to_have_attribute(
            "data-status", "running"
        )
        assert await section.inner_text() == before

        provider.release("repair")
        await wait_finished(page)
        await expect(section.locator(".repair-headline")).to_have_text(
            "verified: passed after 1 repair round"
        )
        await expect(section.locator("li[data-round='1']")).to_have_attribute(
            "data-status", "changed"
        )
        await expect(section.locator("li[data-round='1']")).to_contain_text("app/api.py")
        await expect(page.locator("[data-ref=events]")).to_contain_text(
            "Repair round 1 changed app/api.py"
        )


async def test_the_diff_of_a_repaired_iteration_marks_the_files_the_repair_changed(
    tmp_path: Path, nats_server: Any, browser: Browser, screenshots: Screenshots
) -> None:
    settings = msgspec.structs.replace(
        make_settings(tmp_path, nats_server.url), verify_pickup_s=30.0
    )
    async with (
        running_stack(
            settings, providers={"offline": IterationRepairingProvider()}, verifier=True
        ) as stack,
        open_page(browser, stack) as page,
    ):
        v1 = (await stack.create())["generation_id"]
        parent = await stack.wait_status(v1, "completed", timeout=120)
        assert parent["verification"]["status"] == "passed", parent["verification"]
        v2 = (await stack.iterate(v1, "add a changelog"))["generation_id"]
        await stack.wait_status(v2, "completed", timeout=120)
        await page.goto(f"/#/g/{v2}")
        await wait_finished(page)

        await expect(page.locator("[data-ref=repairs] .repair-headline")).to_have_text(
            "verified: passed after 1 repair round"
        )
        diff = page.locator("[data-ref=diff-panel]")
        repaired = diff.locator(".diff-file[data-path='app/api.py']")
        await expect(repaired).to_have_attribute("data-repair-rounds", "1")
        await expect(repaired.locator("summary .badge.repaired")).to_have_text(
            "repaired in round 1"
        )
        await expect(diff.locator(".diff-file[data-path='CHANGES.md']")).to_have_attribute(
            "data-status", "added"
        )
        assert await diff.locator(".diff-file[data-repair-rounds]").count() == 1
        assert await diff.locator(".badge.repaired").count() == 1
        await expect(page.locator("[data-ref=diff-summary]")).to_contain_text("1 changed by repair")
        await screenshots.take(page, "repaired-iteration-diff")
