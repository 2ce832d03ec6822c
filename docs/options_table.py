"""Write the options table of docs/reference.md from the declarations in
unicornish/config.py (`make docs`); tests/test_docs.py fails until it is run."""

from __future__ import annotations

from pathlib import Path

from unicornish.config import OPTIONS
from unicornish.options import markdown_table, replace_table

REFERENCE = Path(__file__).resolve().parent / "reference.md"


def main() -> None:
    text = REFERENCE.read_text()
    REFERENCE.write_text(replace_table(text, markdown_table(OPTIONS)))


if __name__ == "__main__":
    main()
