"""Where the gateway is and who the caller is, and an HTTP client that turns the gateway's
problem+json answers into one readable error."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"
DEV_KEY_FILE = Path(".kiln") / "dev-api-key"

# A 503 (the broker restarting or electing a leader) is retried after its Retry-After, at
# most this many times and never waiting longer than MAX_RETRY_AFTER_S at once.
RETRIES_ON_503 = 5
MAX_RETRY_AFTER_S = 10.0
# Requests that change nothing when repeated. A create or iterate is repeated only with an
# Idempotency-Key (without one, a 503 after the broker took the request but before it
# answered would make a second version); with one, a lost answer is retried too.
_IDEMPOTENT = ("GET", "HEAD")
_IDEMPOTENT_POSTS = ("/stream-token", "/cancel")
IDEMPOTENCY_KEY = "Idempotency-Key"


class ClientError(Exception):
    """A request the gateway refused or could not answer; `str()` is the message to print."""


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """--url and --api-key, with the environment and `kiln up`'s key file as defaults."""
    parser.add_argument("--url", help=f"the gateway (default $KILN_URL or {DEFAULT_URL})")
    parser.add_argument(
        "--api-key", help=f"an API key (default $KILN_API_KEY, then ./{DEV_KEY_FILE})"
    )


def gateway_url(args: argparse.Namespace) -> str:
    """The gateway's base URL from the flag, $KILN_URL or the default."""
    return str(getattr(args, "url", None) or os.environ.get("KILN_URL") or DEFAULT_URL).rstrip("/")


def api_key(args: argparse.Namespace) -> str | None:
    """The API key from the flag, $KILN_API_KEY, or the key `kiln up` wrote here."""
    key = getattr(args, "api_key", None) or os.environ.get("KILN_API_KEY")
    if key:
        return str(key)
    if DEV_KEY_FILE.is_file():
        return DEV_KEY_FILE.read_text().strip() or None
    return None


class Gateway:
    """A small synchronous client of the gateway's HTTP API."""

    def __init__(
        self,
        url: str,
        key: str | None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = url
        self.sleep = sleep
        self.http = httpx.Client(
            base_url=url, headers=headers, timeout=timeout, transport=transport
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Gateway:
        """The client the command-line arguments describe."""
        return cls(gateway_url(args), api_key(args))

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request; ClientError with the gateway's own words on 4xx and 5xx. A 503 to a
        request that is safe to repeat is retried after its Retry-After (bounded)."""
        keyed = IDEMPOTENCY_KEY in (kwargs.get("headers") or {})
        repeatable = method in _IDEMPOTENT or path.endswith(_IDEMPOTENT_POSTS) or keyed
        for attempt in range(RETRIES_ON_503 + 1):
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                lost_answer = isinstance(exc, httpx.ReadError | httpx.ReadTimeout)
                if keyed and lost_answer and attempt < RETRIES_ON_503:
                    # Sent, but its answer was lost: the key makes sending it again safe.
                    self.sleep(1.0)
                    continue
                raise ClientError(f"cannot reach the gateway at {self.url}: {exc}") from None
            if response.status_code != 503 or not repeatable or attempt == RETRIES_ON_503:
                break
            self.sleep(retry_after_s(response))
        if response.status_code >= 400:
            raise ClientError(problem_text(response))
        return response

    def decoded(self, method: str, path: str, into: type[T], **kwargs: Any) -> T:
        """A request whose JSON answer is decoded into `into`."""
        return self.decode(self.request(method, path, **kwargs), into)

    def decode(self, response: httpx.Response, into: type[T]) -> T:
        """The JSON answer decoded into `into`; ClientError if it is not that."""
        try:
            return msgspec.json.decode(response.content, type=into)
        except msgspec.MsgspecError as exc:
            raise ClientError(
                f"{response.request.method} {response.request.url.path}: the answer from "
                f"{self.url} is not what a Kiln gateway sends ({exc})"
            ) from None


def retry_after_s(response: httpx.Response) -> float:
    """The wait a 503 asks for (Retry-After in seconds), within 0.5 s and MAX_RETRY_AFTER_S."""
    try:
        wanted = float(response.headers.get("retry-after", "1"))
    except ValueError:  # an HTTP date: Kiln sends seconds, so wait the default
        wanted = 1.0
    return min(max(wanted, 0.5), MAX_RETRY_AFTER_S)


def problem_text(response: httpx.Response) -> str:
    """One line, `<status> <title>: <detail>`, from a problem+json answer (or the body)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("detail"):
        title = body.get("title") or response.reason_phrase
        text = f"{response.status_code} {title}: {body['detail']}"
    else:
        text = f"{response.status_code} {response.reason_phrase}: {response.text[:300]}"
    return " ".join(text.split())
