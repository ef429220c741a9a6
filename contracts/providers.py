"""The providers a request may name, and how orchestrators say which ones they can run.

Each orchestrator writes a key per provider it has the configuration for (the provider's
name, valued with the worker's name) to the `KILN_PROVIDERS` bucket when it starts, and
again every `ADVERT_REFRESH_S`; the bucket forgets a key `ADVERT_TTL_S` after its last
write. The gateway refuses a provider that no live orchestrator advertises, before
anything is published, and says what to configure; its own environment plays no part.
"""

KNOWN_PROVIDERS: tuple[str, ...] = ("offline", "gemini", "openai")
DEFAULT_PROVIDER = "offline"

ADVERT_TTL_S = 60.0
ADVERT_REFRESH_S = 15.0

NEEDS: dict[str, str] = {
    "gemini": "set GEMINI_API_KEY (or GOOGLE_API_KEY)",
    "openai": "set KILN_OPENAI_BASE_URL (and KILN_OPENAI_API_KEY and KILN_OPENAI_MODEL as "
    "the endpoint needs)",
}
"""What an orchestrator needs to run each provider that needs configuration."""
