"""The providers an orchestrator can use, created on first use."""

from __future__ import annotations

from contracts.providers import KNOWN_PROVIDERS
from services.common.settings import Settings
from services.orchestrator.providers.base import Provider, ProviderError


class Providers:
    """Provider instances by name. `overrides` replaces or adds providers (tests, plugins)."""

    def __init__(self, settings: Settings, overrides: dict[str, Provider] | None = None) -> None:
        self.settings = settings
        self._instances: dict[str, Provider] = dict(overrides or {})

    def configured(self) -> list[str]:
        """The providers this orchestrator has the configuration for (what it advertises)."""
        present = {
            "offline": True,
            "gemini": bool(self.settings.effective_gemini_key),
            "openai": bool(self.settings.openai_base_url),
        }
        return sorted({name for name, ok in present.items() if ok} | self._instances.keys())

    def get(self, name: str) -> Provider:
        """The provider called `name`, or ProviderError naming the ones that exist."""
        if name not in self._instances:
            self._instances[name] = self._create(name)
        return self._instances[name]

    def _create(self, name: str) -> Provider:
        if name == "offline":
            from services.orchestrator.providers.offline import OfflineProvider

            return OfflineProvider(phase_delay_s=self.settings.offline_phase_delay_s)
        if name == "gemini":
            try:
                from services.orchestrator.providers.gemini import GeminiProvider
            except ImportError:
                raise ProviderError(
                    "the gemini provider needs the google-genai package: install kiln[gemini]"
                ) from None

            return GeminiProvider(self.settings)
        if name == "openai":
            from services.orchestrator.providers.openai import OpenAIProvider

            return OpenAIProvider(self.settings)
        known = ", ".join(KNOWN_PROVIDERS)
        raise ProviderError(f"unknown provider {name!r}; known providers: {known}")
