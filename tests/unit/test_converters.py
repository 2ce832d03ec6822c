"""The option converters of unicornish/config.py: what each takes, what it gives
back, and the words of its refusal (they reach the user as `--opt must be ...`)."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest

from unicornish.config import (
    OPTIONS,
    OPTIONS_BY_NAME,
    Settings,
    convert_option,
    count,
    flag,
    optional_count,
    optional_mebibytes,
    optional_positive_seconds,
    optional_text,
    positive_count,
    positive_seconds,
    seconds,
    term_meaning,
    text,
    text_list,
    user_spec,
)

NOT_NUMBERS = [
    "",
    "  ",
    "abc",
    "1e",
    "nan",
    "inf",
    "-inf",
    None,
    True,
    False,
    [],
    math.nan,
    math.inf,
]


@pytest.mark.parametrize(
    ("given", "expected"), [(0, 0), (3, 3), ("3", 3), (" 7 ", 7), ("0", 0), ("010", 10)]
)
def test_count_takes_whole_numbers_from_zero(given, expected):
    result = count(given)
    assert result == expected and type(result) is int


@pytest.mark.parametrize("given", [-1, "-1", "1.5", 1.5, 2.0, "x", "", None, True, False, "0x10"])
def test_count_refuses_the_rest(given):
    with pytest.raises(ValueError) as caught:
        count(given)
    assert str(caught.value) == f"must be a whole number >= 0, got {given!r}"


def test_positive_count_is_count_without_zero():
    assert positive_count("2") == 2
    for zero in (0, "0", " 0 "):
        with pytest.raises(ValueError, match=r"^must be a whole number > 0, got 0$"):
            positive_count(zero)
    with pytest.raises(ValueError, match=">= 0"):
        positive_count(-1)


@pytest.mark.parametrize(
    ("given", "expected"),
    [(0, 0.0), (0.5, 0.5), (3, 3.0), ("2.5", 2.5), (" 1 ", 1.0), ("1e1", 10.0)],
)
def test_seconds_takes_numbers_from_zero(given, expected):
    result = seconds(given)
    assert result == expected and type(result) is float


@pytest.mark.parametrize("given", [-0.1, "-1", *NOT_NUMBERS])
def test_seconds_refuses_the_rest(given):
    with pytest.raises(ValueError) as caught:
        seconds(given)
    assert str(caught.value) == f"must be a number of seconds >= 0, got {given!r}"


def test_positive_seconds_refuses_zero_and_below():
    assert positive_seconds("0.001") == 0.001
    assert positive_seconds(30) == 30.0
    for given in (0, 0.0, "0", -2):
        with pytest.raises(ValueError) as caught:
            positive_seconds(given)
        assert str(caught.value) == f"must be a number of seconds > 0, got {given!r}"
    with pytest.raises(ValueError, match="> 0, got 'nan'"):
        positive_seconds("nan")


def test_optional_positive_seconds_is_off_for_none_and_false():
    assert optional_positive_seconds(None) is None
    assert optional_positive_seconds(False) is None
    assert optional_positive_seconds("5") == 5.0
    with pytest.raises(ValueError, match="> 0"):
        optional_positive_seconds(0)
    with pytest.raises(ValueError):
        optional_positive_seconds(True)


@pytest.mark.parametrize(
    ("given", "expected"), [(None, None), (False, None), (0, None), ("0", None)]
)
def test_optional_count_zero_means_off(given, expected):
    assert optional_count(given) is expected


def test_optional_count_otherwise_is_a_count():
    assert optional_count("4") == 4
    assert optional_count(1000) == 1000
    for bad in (-1, "x", 1.5, True):
        with pytest.raises(ValueError, match=">= 0"):
            optional_count(bad)


def test_optional_mebibytes():
    assert optional_mebibytes(None) is None
    assert optional_mebibytes(False) is None
    assert optional_mebibytes("40") == 40.0
    assert optional_mebibytes(0.5) == 0.5
    for bad in (0, "-5", "lots", "inf"):
        with pytest.raises(ValueError) as caught:
            optional_mebibytes(bad)
        assert str(caught.value) == f"must be a number of MiB > 0, got {bad!r}"


def test_text_must_be_a_non_empty_string_and_is_kept_as_given():
    assert text("app.py") == "app.py"
    assert text(" a b ") == " a b "
    for bad in ("", "   ", "\n", 3, None, b"app.py", ["app.py"]):
        with pytest.raises(ValueError) as caught:
            text(bad)
        assert str(caught.value) == f"must be a non-empty string, got {bad!r}"


def test_optional_text():
    assert optional_text(None) is None
    assert optional_text("u.pid") == "u.pid"
    with pytest.raises(ValueError):
        optional_text("")


def test_flag_takes_only_booleans():
    assert flag(True) is True and flag(False) is False
    for bad in (1, 0, "yes", "true", None):
        with pytest.raises(ValueError) as caught:
            flag(bad)
        assert str(caught.value) == f"must be True or False, got {bad!r}"


def test_text_list():
    assert text_list("unix:/s") == ["unix:/s"]
    assert text_list(["a:1", "b:2"]) == ["a:1", "b:2"]
    assert text_list(("a:1",)) == ["a:1"]
    assert text_list([]) == []
    for bad in (5, None, {"a": 1}, {"a"}):
        with pytest.raises(ValueError) as caught:
            text_list(bad)
        assert str(caught.value) == f"must be a list of strings, got {bad!r}"
    for bad_item in (["a:1", ""], ["a:1", 2]):
        with pytest.raises(ValueError, match="non-empty string"):
            text_list(bad_item)


def test_term_meaning():
    assert term_meaning("graceful") == "graceful"
    assert term_meaning("quick") == "quick"
    for bad in ("Quick", "fast", "", None, " quick"):
        with pytest.raises(ValueError) as caught:
            term_meaning(bad)
        assert str(caught.value) == f"must be 'graceful' or 'quick', got {bad!r}"


@pytest.mark.parametrize(
    ("given", "expected"),
    [(None, None), ("www", "www"), ("www:adm", "www:adm"), (" 33:33 ", "33:33")],
)
def test_user_spec_takes_user_or_user_group(given, expected):
    assert user_spec(given) == expected


@pytest.mark.parametrize("given", ["www:", ":adm", "a:b:c", " :adm"])
def test_user_spec_refuses_empty_halves_and_extra_colons(given):
    with pytest.raises(ValueError) as caught:
        user_spec(given)
    assert str(caught.value) == f"must be USER or USER:GROUP, got {given!r}"


def test_user_spec_refuses_empty_text():
    with pytest.raises(ValueError, match="non-empty string"):
        user_spec("  ")


def test_every_option_is_a_setting_and_converts_through_its_table_entry():
    setting_names = {f.name for f in fields(Settings)}
    assert {option.name for option in OPTIONS} <= setting_names
    assert set(OPTIONS_BY_NAME) == {option.name for option in OPTIONS}
    assert OPTIONS_BY_NAME["graceful_timeout"].flag_name == "--graceful-timeout"
    assert OPTIONS_BY_NAME["daemonize"].short == "-D"
    assert convert_option("workers", "3") == 3
    assert convert_option("max_tasks", "0") is None
    assert convert_option("listen", "unix:/s") == ["unix:/s"]
    with pytest.raises(ValueError):
        convert_option("poll", "0")
    with pytest.raises(KeyError):
        convert_option("no_such_option", "1")
