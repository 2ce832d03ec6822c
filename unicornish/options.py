"""How an option is declared: once, on its `Settings` field (config.py).

`option(...)` returns the dataclass field, its default, and an `Option` in
the field's metadata holding everything else: converter, help, metavar,
the reference's text, and when a changed value takes effect. The command
line (cli.py), the config file's keys, the "(default ...)" of `--help` and
the options table of docs/reference.md are all read from there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

T = TypeVar("T")

# When a changed value takes effect: a HUP applies it (the config file is
# read again), only a USR2 does (a new master binds it), or only a start.
AppliedBy = Literal["HUP", "USR2", "start"]

METADATA_KEY = "unicornish.option"


@dataclass(frozen=True)
class Option:
    """One option: its long name, its converter, and how it is shown."""

    name: str
    convert: Callable[[Any], Any]
    help: str
    metavar: str | None = None
    is_flag: bool = False
    repeatable: bool = False
    short: str | None = None
    # For the options that name the app: the module of the worker kind that runs
    # it (worker/kinds.py). Exactly one of them is given.
    kind: str | None = None
    applied_by: AppliedBy = "HUP"
    # What the master logs when a HUP brings a value that only a USR2 applies.
    usr2_note: str | None = None
    # The default in words, where the value alone says too little ("stderr").
    default_text: str | None = None
    # The reference's "value" and "what it does" cells (markdown).
    value: str = ""
    doc: str = ""
    # False: the command line only (-c names the file, so it cannot be in it).
    in_file: bool = True
    default: Any = None

    @property
    def flag_name(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def shown_default(self) -> str:
        """The default as --help and the reference show it."""
        if self.default_text is not None:
            return self.default_text
        if self.default is None or self.default is False or self.default == ():
            return "off"
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return str(self.default)

    @property
    def hup_warning(self) -> str:
        return self.usr2_note or f"{self.flag_name} changed: it takes effect on USR2 (re-exec)"

    @property
    def full_help(self) -> str:
        """The help with its default, as --help shows it (flags and the app have none)."""
        if self.is_flag or self.kind:
            return self.help
        return f"{self.help} (default {self.shown_default})"


def option(
    default: T,
    convert: Callable[[Any], Any],
    help: str,
    metavar: str | None = None,
    *,
    is_flag: bool = False,
    repeatable: bool = False,
    short: str | None = None,
    kind: str | None = None,
    applied_by: AppliedBy = "HUP",
    usr2_note: str | None = None,
    default_text: str | None = None,
    value: str = "",
    doc: str = "",
    in_file: bool = True,
) -> T:
    """A `Settings` field that is an option; its name is the field's name."""
    declared = Option(
        "",
        convert,
        help,
        metavar,
        is_flag=is_flag,
        repeatable=repeatable,
        short=short,
        kind=kind,
        applied_by=applied_by,
        usr2_note=usr2_note,
        default_text=default_text,
        value=value,
        doc=doc,
        in_file=in_file,
        default=default,
    )
    return dataclasses.field(default=default, metadata={METADATA_KEY: declared})


def declared_options(settings_class: type) -> tuple[Option, ...]:
    """The options declared on a dataclass's fields, in field order, named."""
    return tuple(
        dataclasses.replace(f.metadata[METADATA_KEY], name=f.name)
        for f in dataclasses.fields(settings_class)
        if METADATA_KEY in f.metadata
    )


# -- the reference's table -------------------------------------------------------------

TABLE_HEADER = "| option | value | default | a change applies on | what it does |"
# Not settings, but on the command line all the same.
FIXED_ROWS = (
    "| `--version` | | | | print `unicornish VERSION` and exit 0 |",
    "| `--help` | | | | print the usage and exit 0 |",
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table_name(option: Option) -> str:
    """`-D, --daemonize` or `--workers N|auto|MIN:MAX`, as the first cell shows it."""
    name = f"{option.short}, {option.flag_name}" if option.short else option.flag_name
    return name + (f" {option.metavar}" if option.metavar else "")


def markdown_table(options: Iterable[Option]) -> str:
    """The options table of docs/reference.md, produced from the declarations."""
    lines = [TABLE_HEADER, "|---|---|---|---|---|"]
    for opt in options:
        cells = [
            f"`{_cell(table_name(opt))}`",
            opt.value or ("flag" if opt.is_flag else ""),
            opt.shown_default,
            opt.applied_by,
            opt.doc or opt.help,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.extend(FIXED_ROWS)
    return "\n".join(lines) + "\n"


def replace_table(document: str, table: str, header: str = "| option |") -> str:
    """`document` with its options table (the first whose header starts with
    `header`) replaced by `table`."""
    lines = document.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "".join(lines[:start]) + table + "".join(lines[end:])
