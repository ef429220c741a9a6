"""The README's settings table is the settings code's, word for word."""

from __future__ import annotations

from pathlib import Path

from services.cli.settings_doc import BEGIN, END, settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_settings_table_matches_the_code() -> None:
    text = README.read_text()
    documented = text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()
    assert documented == settings_table(markdown=True), (
        "README.md's settings table is out of date: paste the output of `kiln settings --markdown`"
    )
