"""A real headless Chromium (Debian's) driven by Playwright, in the test's event loop so the
in-process Kiln stack and the browser run side by side."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _each_database(database: str) -> str:
    """Every test here that runs Kiln's services runs once per database (tests/conftest.py)."""
    return database


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
README_SCREENSHOT = ROOT / "docs" / "page-mid-generation.png"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here drives the browser; skip them all, with the reason, without it."""
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent != here:
            continue
        item.add_marker(pytest.mark.browser)
        if not CHROMIUM.exists():
            item.add_marker(
                pytest.mark.skip(
                    reason=f"{CHROMIUM} is missing: install Debian's chromium "
                    "(`apt-get install chromium`; `./kiln test` does it)"
                )
            )


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    """A launched Chromium, closed after the test."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


class Screenshots:
    """Saves `<test>-<state>.png` into test-artifacts/screenshots."""

    def __init__(self, test_name: str) -> None:
        self.test_name = test_name
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    async def take(self, page, state: str, *, full_page: bool = True) -> Path:  # type: ignore[no-untyped-def]
        path = SCREENSHOTS / f"{self.test_name}-{state}.png"
        await page.screenshot(path=str(path), full_page=full_page, animations="disabled")
        return path

    @staticmethod
    def publish_for_readme(path: Path) -> None:
        """The README's picture of the page mid-generation: written when it is missing or
        when KILN_UPDATE_README_SCREENSHOT=1, so a test run leaves the tree unchanged."""
        if README_SCREENSHOT.exists() and os.environ.get("KILN_UPDATE_README_SCREENSHOT") != "1":
            return
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_SCREENSHOT)


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Screenshots:
    """Screenshots named after the test."""
    return Screenshots(request.node.name)
