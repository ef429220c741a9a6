"""The offline provider: deterministic projects from the schema, no API key, no network."""

from services.orchestrator.providers.offline.provider import OfflineProvider

__all__ = ["OfflineProvider"]
