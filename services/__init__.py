"""Kiln's services: orchestrator, storage, gateway, the CLI, and their shared plumbing."""
