"""The security headers of every response: the page's Content-Security-Policy, and a
default for everything else.

The page keeps the API key in localStorage, so no script from anywhere but Kiln's own
origin may ever run on it. The page sets `PAGE_POLICY`; every other response that sets no
policy of its own (JSON, problems, files, static assets, whatever a future route serves as
HTML) gets `DEFAULT_POLICY`, which allows nothing at all to load or run.
"""

from __future__ import annotations

from litestar.types import Message, Send

# The page shows what a model wrote: it runs only its own scripts and talks only to its
# own origin, so nothing in a generated file can load or send anything elsewhere.
PAGE_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

DEFAULT_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

_DEFAULTS = (
    (b"content-security-policy", DEFAULT_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
)


def with_security_headers(send: Send) -> Send:
    """`send`, adding the default security headers to a response start that lacks them."""

    async def secured(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers") or [])
            present = {bytes(name).lower() for name, _ in headers}
            headers += [(name, value) for name, value in _DEFAULTS if name not in present]
            message = {**message, "headers": headers}
        await send(message)

    return secured
