"""Whether a request's provider can run: known to Kiln, and advertised by an orchestrator.

The orchestrators hold the providers' keys, not the gateway, so the gateway asks the
`KILN_PROVIDERS` bucket (contracts/providers.py). While no orchestrator has advertised
anything (none started yet), a known provider is accepted: the command waits in the queue,
and an orchestrator without the provider's configuration fails the generation saying what
to set.
"""

from __future__ import annotations

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from contracts import streams
from contracts.providers import DEFAULT_PROVIDER, KNOWN_PROVIDERS, NEEDS
from services.common.logs import get_logger
from services.gateway.errors import BadRequest

log = get_logger(__name__)


class ProviderCheck:
    """Answers which provider a request may use."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._adverts: KeyValue | None = None

    async def checked(self, name: str | None) -> str:
        """The provider to use (`offline` when none is named), or BadRequest saying why not."""
        provider = name or DEFAULT_PROVIDER
        if provider not in KNOWN_PROVIDERS:
            raise BadRequest(
                f"Unknown provider {provider!r}; choose one of: {', '.join(KNOWN_PROVIDERS)}.",
                problems=[{"location": "provider", "message": "unknown provider"}],
            )
        if provider not in NEEDS or await self._advertised(provider):
            return provider
        if not await self._advertised(DEFAULT_PROVIDER):
            return provider  # no orchestrator has said what it runs yet
        raise BadRequest(
            f"The {provider} provider is not configured on this server: {NEEDS[provider]} "
            "for the orchestrator, or use the offline provider.",
            problems=[{"location": "provider", "message": f"{provider} is not configured"}],
        )

    async def _advertised(self, provider: str) -> bool:
        try:
            if self._adverts is None:
                self._adverts = await self.js.key_value(streams.PROVIDERS_BUCKET)
            await self._adverts.get(provider)
        except (KeyNotFoundError, BucketNotFoundError, NotFoundError):
            return False
        except nats.errors.Error as exc:
            log.warning("Could not read the providers' adverts: {error}", error=repr(exc))
            return False
        return True
