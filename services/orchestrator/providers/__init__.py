"""Providers turn one phase of a request into files: offline (default), gemini, openai."""
