"""Minimal servers the bench measures Kiln against."""
