"""The page's fold (static/model.js) against the shared table, in a real Chromium: the same
cases the Python fold passes (tests/contracts/test_state.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.contracts.fold_table import CASES, mismatches

STATIC = Path(__file__).resolve().parents[2] / "services" / "gateway" / "static"
ORIGIN = "http://kiln.test"

FOLD_ALL = """async (cases) => {
  const { applyEvent, createModel, summaryOf } = await import("/model.js");
  return cases.map((events) => {
    const model = createModel(events[0].generation_id);
    events.forEach((event, index) => applyEvent(model, event, index + 1));
    return summaryOf(model);
  });
}"""


async def _serve_static(route: Any) -> None:
    """The page's modules from the tree, and an empty page to import them into."""
    path = route.request.url.removeprefix(ORIGIN).split("?")[0].lstrip("/")
    if not path:
        await route.fulfill(
            status=200, content_type="text/html", body="<!doctype html><title>fold</title>"
        )
        return
    file = STATIC / path
    if file.suffix != ".js" or not file.is_file():
        await route.fulfill(status=404, body="")
        return
    await route.fulfill(status=200, content_type="text/javascript", body=file.read_text())


async def test_model_js_folds_the_shared_cases_as_the_python_fold_does(browser: Any) -> None:
    page = await browser.new_page()
    await page.route(f"{ORIGIN}/**", _serve_static)
    await page.goto(f"{ORIGIN}/")
    folded = await page.evaluate(FOLD_ALL, [case.events for case in CASES])
    failures = {
        case.name: problems
        for case, got in zip(CASES, folded, strict=True)
        if (problems := mismatches(case.expect, got))
    }
    assert failures == {}
