"""The page's create sends an Idempotency-Key: when the gateway stored the request but its
answer was lost (here, replaced by a 503), the page asks again with the same key and lands
on the one generation the first attempt made."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Route, expect

from tests.browser.test_page import create_from_form, open_page
from tests.conftest import make_settings
from tests.support.stack import running_stack

UUID4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


async def test_a_create_whose_answer_was_lost_is_sent_again_and_made_once(
    tmp_path: Path, nats_server: Any, browser: Browser
) -> None:
    settings = make_settings(tmp_path, nats_server.url)
    async with running_stack(settings) as stack, open_page(browser, stack) as page:
        keys: list[str | None] = []
        first_answer: dict[str, Any] = {}

        async def lose_the_first_answer(route: Route) -> None:
            request = route.request
            if request.method != "POST":
                await route.continue_()
                return
            keys.append(await request.header_value("idempotency-key"))
            if len(keys) > 1:
                await route.continue_()
                return
            # The gateway takes the request; the browser hears 503 instead of its answer.
            stored = await route.fetch()
            first_answer.update(await stored.json())
            await route.fulfill(
                status=503,
                headers={"Retry-After": "1", "Content-Type": "application/problem+json"},
                body=json.dumps({"status": 503, "title": "Service Unavailable", "detail": "x"}),
            )

        await page.route("**/generations", lose_the_first_answer)
        generation_id = await create_from_form(page)

        assert len(keys) == 2 and keys[0] and keys[0] == keys[1], keys
        assert re.fullmatch(UUID4, keys[0]), keys[0]
        assert generation_id == first_answer["generation_id"]
        await expect(page.locator("[data-ref=status]")).to_have_text("completed", timeout=60_000)
        projects = (await stack.alice.get("/projects")).json()
        assert len(projects["projects"]) == 1, "one project, not two"
