"""The file templates of the offline provider: Python functions that build file text."""
