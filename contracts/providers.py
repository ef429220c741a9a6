"""The providers a request may name."""

KNOWN_PROVIDERS: tuple[str, ...] = ("offline", "gemini", "openai")
DEFAULT_PROVIDER = "offline"
