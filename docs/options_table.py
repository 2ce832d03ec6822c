"""Write the options table of docs/reference.md from the declarations in
unicornish/config.py, and its control protocol table from those in
unicornish/ctl/commands.py (`make docs`); tests/test_docs.py fails until it is run."""

from __future__ import annotations

from pathlib import Path

from unicornish.config import OPTIONS
from unicornish.ctl import commands
from unicornish.options import markdown_table, replace_table

REFERENCE = Path(__file__).resolve().parent / "reference.md"


def main() -> None:
    text = REFERENCE.read_text()
    text = replace_table(text, markdown_table(OPTIONS))
    text = replace_table(text, commands.markdown_table(), commands.TABLE_HEADER)
    REFERENCE.write_text(text)


if __name__ == "__main__":
    main()
