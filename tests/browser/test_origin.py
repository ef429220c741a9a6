"""Nothing on Kiln's origin runs a script from anywhere else (#19 item 4).

The page keeps the API key in localStorage, so a script from a CDN running on Kiln's
origin could read it. In a real Chromium: every page Kiln serves (the app and whatever it
serves under /schema) makes no request to another origin, every HTML response carries a
Content-Security-Policy that allows scripts from `'self'` at most, and that policy really stops a
script from elsewhere that finds its way into the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Response

from tests.conftest import make_settings
from tests.support.stack import running_stack

# Every address Litestar ever served API documentation at, and the app's own page.
PAGES = (
    "/",
    "/#/",
    "/schema",
    "/schema/",
    "/schema/swagger",
    "/schema/elements",
    "/schema/redoc",
    "/schema/rapidoc",
    "/schema/scalar",
    "/schema/openapi.json",
    "/no/such/page",
)

# A script from another origin, added the way an injected tag would be; it reports the
# CSP violation (or its own load, were it ever allowed).
INJECT_FOREIGN_SCRIPT = """
() => new Promise((resolve) => {
  document.addEventListener('securitypolicyviolation', (event) =>
    resolve({ blocked: event.blockedURI, directive: event.effectiveDirective }), { once: true });
  const script = document.createElement('script');
  script.src = 'https://cdn.jsdelivr.net/npm/kiln-test-probe@1/probe.js';
  script.onload = () => resolve({ loaded: true });
  script.onerror = () => setTimeout(() => resolve({ error: true }), 1000);
  document.head.appendChild(script);
})
"""


def _script_sources(policy: str) -> list[str]:
    directives = {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}
    return directives.get("script-src", directives.get("default-src", ["*"]))


async def test_no_page_on_kilns_origin_loads_anything_from_elsewhere(
    tmp_path: Path, nats_server: Any, browser: Browser
) -> None:
    settings = make_settings(tmp_path, nats_server.url)
    async with running_stack(settings, orchestrator=False, storage=False) as stack:
        context = await browser.new_context(base_url=stack.url)
        page = await context.new_page()
        requested: list[str] = []
        html: list[Response] = []
        page.on("request", lambda request: requested.append(request.url))
        page.on(
            "response",
            lambda response: (
                html.append(response)
                if "text/html" in response.headers.get("content-type", "")
                else None
            ),
        )
        try:
            for path in PAGES:
                await page.goto(path)
                await page.wait_for_load_state("networkidle")
            foreign = [
                url for url in requested if not url.startswith((stack.url + "/", "data:", "blob:"))
            ]
            assert foreign == [], f"requests to other origins: {foreign}"
            assert html, "the app's page is HTML"
            for response in html:
                policy = response.headers.get("content-security-policy")
                assert policy, f"{response.url} is HTML without a Content-Security-Policy"
                assert set(_script_sources(policy)) <= {"'self'", "'none'"}, (response.url, policy)

            await page.goto("/#/")
            outcome = await page.evaluate(INJECT_FOREIGN_SCRIPT)
            assert outcome == {
                "blocked": "https://cdn.jsdelivr.net/npm/kiln-test-probe@1/probe.js",
                "directive": "script-src-elem",
            }
        finally:
            await context.close()
