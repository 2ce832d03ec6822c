"""Each option is declared once, on its Settings field: what the command line,
the config file and a HUP read from that declaration."""

from __future__ import annotations

import logging
from dataclasses import fields, replace

import pytest

from unicornish.cli import build_parser
from unicornish.config import FILE_OPTIONS, OPTIONS, OPTIONS_BY_NAME, Settings
from unicornish.master.reload import apply_settings
from unicornish.options import Option, option


def test_every_option_is_a_field_with_its_declared_default() -> None:
    defaults = {f.name: f.default for f in fields(Settings)}
    for opt in OPTIONS:
        assert defaults[opt.name] == opt.default == getattr(Settings(), opt.name), opt.name


def test_help_shows_each_default_from_the_declaration() -> None:
    text = " ".join(build_parser().format_help().split())
    for opt in OPTIONS:
        if not opt.is_flag and not opt.kind:
            assert f"(default {opt.shown_default})" in text, opt.name
    assert "(default 30)" in text and "(default quick)" in text and "(default stderr)" in text
    assert "+0..10% jitter" in text  # a % in a help text reaches --help as it is


def test_config_is_the_command_lines_only() -> None:
    assert OPTIONS_BY_NAME["config"].short == "-c"
    assert "config" not in FILE_OPTIONS
    assert set(FILE_OPTIONS) == {opt.name for opt in OPTIONS} - {"config"}


@pytest.mark.parametrize(
    ("name", "value", "line"),
    [
        ("listen", ("127.0.0.1:1",), "listen addresses changed: they take effect on USR2"),
        ("control", "/tmp/c.sock", "control socket changed: it takes effect on USR2"),
        ("metrics", "127.0.0.1:9", "metrics address changed: it takes effect on USR2"),
    ],
)
def test_a_hup_warns_of_what_only_a_usr2_applies(
    caplog: pytest.LogCaptureFixture, name: str, value: object, line: str
) -> None:
    assert OPTIONS_BY_NAME[name].applied_by == "USR2"
    old = Settings(app="a.py")
    with caplog.at_level(logging.WARNING):
        apply_settings(old, replace(old, **{name: value}), logging.getLogger("t"))
    assert [r.getMessage() for r in caplog.records] == [line + " (re-exec)"]


def test_a_declaration_is_a_dataclass_field_holding_its_option() -> None:
    declared = option(5.0, float, "how long", "SECONDS")
    assert declared.default == 5.0  # type: ignore[attr-defined]
    held = declared.metadata["unicornish.option"]  # type: ignore[attr-defined]
    assert isinstance(held, Option) and held.full_help == "how long (default 5)"
