"""Repair rounds on the page, in a real Chromium against a real stack with a real verifier:
the rounds appear live, a reload mid-round shows the same state, and the diff of a repaired
iteration marks the files the repair changed."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import msgspec
import pytest
from playwright.async_api import Browser, expect

from contracts.phases import GeneratedFile
from services.orchestrator.providers.base import PhaseRequest, RepairBrief
from tests.browser.conftest import Screenshots
from tests.browser.scripted import FILES_BY_PHASE, ScriptedProvider
from tests.browser.test_page import create_from_form, open_page, page_files, wait_finished
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


class NeverFixingProvider(ScriptedProvider):
    """The scripted phases with a bug in the API that no repair round fixes: each round
    changes the file (a note of the round) and keeps the bug. It keeps the briefs."""

    repairs = True

    def __init__(self) -> None:
        super().__init__()
        self.briefs: list[RepairBrief] = []

    def _files(self, request: PhaseRequest) -> list[GeneratedFile]:
        if request.phase == "api":
            return [GeneratedFile("app/api.py", BUGGY_API)]
        if request.phase == "repair":
            assert request.repair is not None
            self.briefs.append(request.repair)
            tried = f"{BUGGY_API}\n# tried in repair round {request.repair.round}\n"
            return [GeneratedFile("app/api.py", tried)]
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


async def test_a_version_no_round_fixes_says_so_names_the_test_and_keeps_its_files(
    tmp_path: Path, nats_server: Any, browser: Browser, screenshots: Screenshots
) -> None:
    provider = NeverFixingProvider()
    settings = msgspec.structs.replace(
        make_settings(tmp_path, nats_server.url), verify_pickup_s=30.0
    )
    assert settings.repair_rounds == 2, "the default number of rounds"
    async with (
        running_stack(settings, providers={"offline": provider}, verifier=True) as stack,
        open_page(browser, stack) as page,
    ):
        generation_id = await create_from_form(page)
        await wait_finished(page)

        # The headline says it failed, after how many rounds; each round is listed.
        section = page.locator("[data-ref=repairs]")
        await expect(section.locator(".repair-headline")).to_have_text(
            "failed: 1 test still failing after 2 rounds"
        )
        for round_ in (1, 2):
            entry = section.locator(f"li[data-round='{round_}']")
            await expect(entry).to_have_attribute("data-status", "changed")
            await expect(entry).to_contain_text("app/api.py")
        assert await section.locator("li[data-round]").count() == 2
        # The version's own tests: failed, with the failing test named and its message.
        panel = page.locator("[data-ref=verification]")
        await expect(panel.locator("[data-ref=verification-badge]")).to_have_text("failed")
        await expect(panel.locator("[data-ref=verification-line]")).to_contain_text("1 failed")
        failures = panel.locator("[data-ref=verification-failures] li")
        await expect(failures).to_have_count(1)
        await expect(failures.locator("code")).to_contain_text("test_empty")
        await expect(failures.locator("pre")).to_contain_text("assert [1] == []")
        version = page.locator(f"[data-ref=versions] li[data-generation='{generation_id}']")
        await expect(version.locator(".badge[data-verdict]")).to_have_text("tests failed")
        # Complete (every file kept), but not shown as a plain success.
        completed = page.locator("[data-ref=completed]")
        await expect(completed).to_contain_text("Its own tests fail")
        await expect(completed).to_have_class(re.compile(r"\btests-failed\b"))
        assert "done" not in (await completed.get_attribute("class") or "").split()
        await screenshots.take(page, "never-repaired")

        # The same after a reload.
        await page.reload()
        await expect(section.locator(".repair-headline")).to_have_text(
            "failed: 1 test still failing after 2 rounds"
        )
        await expect(failures.locator("code")).to_contain_text("test_empty")

        # The files are kept and downloadable: the zip holds the last round's API.
        await expect(page.locator("[data-ref=completed]")).to_contain_text("complete")
        async with page.expect_download() as download_info:
            await page.get_by_role("button", name="Download zip").click()
        download = await download_info.value
        saved = tmp_path / download.suggested_filename
        await download.save_as(saved)
        with zipfile.ZipFile(saved) as archive:
            assert sorted(archive.namelist()) == sorted(await page_files(page))
            api = archive.read("app/api.py").decode()
        assert "return [1]" in api and api.endswith("# tried in repair round 2\n")
        status = (await stack.alice.get(f"/generations/{generation_id}")).json()

    assert status["status"] == "completed", "the files are kept"
    assert status["verification"]["headline"] == "failed: 1 test still failing after 2 rounds"
    # Each round was told the failing test and the end of the sandboxed run's output.
    assert [b.round for b in provider.briefs] == [1, 2]
    for brief in provider.briefs:
        assert [f.test_id for f in brief.failures] and "test_empty" in brief.failures[0].test_id
        assert "1 failed" in brief.output, brief.output
