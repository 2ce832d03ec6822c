"""parse_request: one line from a control-socket client, as JSON or as `ctl` words,
into (command, parameters), or a RequestError whose text goes back to the client."""

from __future__ import annotations

import json

import pytest

from unicornish.ctl.commands import NAMES, RequestError, parse_request

PLAIN = ["status", "ttin", "ttou", "reload", "reopen", "upgrade", "metrics", "refork"]


def refused(line: str) -> str:
    with pytest.raises(RequestError) as caught:
        parse_request(line)
    return str(caught.value)


def test_the_commands():
    assert NAMES == (
        "status",
        "scale",
        "ttin",
        "ttou",
        "reload",
        "reopen",
        "stop",
        "upgrade",
        "metrics",
        "refork",
    )


@pytest.mark.parametrize("command", PLAIN)
def test_commands_without_parameters_as_words_and_as_json(command):
    assert parse_request(command) == (command, {})
    assert parse_request(json.dumps({"command": command})) == (command, {})


def test_scale_as_words():
    assert parse_request("scale 3") == ("scale", {"workers": 3})
    assert parse_request("scale 0") == ("scale", {"workers": 0})
    assert parse_request("scale   12") == ("scale", {"workers": 12})


@pytest.mark.parametrize(("workers", "expected"), [(4, 4), (0, 0), ("2", 2), (" 5 ", 5)])
def test_scale_as_json(workers, expected):
    line = json.dumps({"command": "scale", "workers": workers})
    assert parse_request(line) == ("scale", {"workers": expected})


@pytest.mark.parametrize("workers", [-1, 2.0, 1.5, True, None, "x", "-1", "", [3]])
def test_scale_refuses_anything_but_a_whole_number(workers):
    line = json.dumps({"command": "scale", "workers": workers})
    assert refused(line) == f"scale needs a whole number of workers >= 0, got {workers!r}"


def test_scale_words_without_a_number():
    assert refused("scale") == "scale needs a whole number of workers >= 0, got None"
    assert refused("scale -1") == "scale needs a whole number of workers >= 0, got '-1'"
    assert refused("scale 2 3") == "bad request: unexpected arguments for 'scale'"


def test_stop_is_graceful_unless_quick():
    assert parse_request("stop") == ("stop", {"quick": False})
    assert parse_request("stop --quick") == ("stop", {"quick": True})
    assert parse_request('{"command": "stop"}') == ("stop", {"quick": False})
    assert parse_request('{"command": "stop", "quick": true}') == ("stop", {"quick": True})
    assert refused('{"command": "stop", "quick": "yes"}') == (
        'bad request: "quick" must be true or false'
    )
    assert refused('{"command": "stop", "quick": 1}') == (
        'bad request: "quick" must be true or false'
    )
    assert refused("stop --now") == "bad request: unexpected arguments for 'stop'"
    assert refused("stop --quick --quick") == "bad request: unexpected arguments for 'stop'"


@pytest.mark.parametrize("command", PLAIN)
def test_extra_words_are_refused(command):
    assert refused(f"{command} now") == f"bad request: unexpected arguments for {command!r}"


def test_unknown_commands_list_the_known_ones():
    message = refused("restart")
    assert message == (
        "unknown command 'restart'; commands: status, scale N, ttin, ttou, reload, reopen,"
        " stop [--quick], upgrade, metrics, refork"
    )
    assert refused('{"command": "restart"}') == message
    assert refused("STATUS").startswith("unknown command 'STATUS'")


def test_a_long_unknown_command_is_cut_in_the_reply():
    long = "x" * 5000
    assert refused(long).startswith(f"unknown command {'x' * 40!r};")
    assert refused(f"{long} y") == f"bad request: unexpected arguments for {'x' * 40!r}"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{", "bad request: not valid JSON"),
        ('{"command": "status"', "bad request: not valid JSON"),
        ("[" * 100_000, "bad request: not valid JSON"),  # too deep for the parser
        ('["status"]', "bad request: expected a JSON object"),
        ("[]", "bad request: expected a JSON object"),
        ("{}", 'bad request: "command" must be a string'),
        ('{"command": 5}', 'bad request: "command" must be a string'),
        ('{"command": null}', 'bad request: "command" must be a string'),
    ],
)
def test_bad_json(line, message):
    assert refused(line) == message


def test_words_and_json_mean_the_same():
    assert parse_request("scale 4") == parse_request('{"command": "scale", "workers": 4}')
    assert parse_request("stop --quick") == parse_request('{"command": "stop", "quick": true}')


@pytest.mark.parametrize(
    "line",
    [
        "scale " + "9" * 32,
        json.dumps({"command": "scale", "workers": "9" * 32}),
        json.dumps({"command": "scale", "workers": int("9" * 32)}),
    ],
)
def test_scale_past_the_maximum_names_the_value_given(line):
    assert refused(line) == f"scale: at most 10000 workers, got {'9' * 32}"


def test_scale_past_the_maximum_with_thousands_of_digits_says_how_many():
    assert (
        refused("scale " + "9" * 5000)
        == "scale: at most 10000 workers, got a number of 5000 digits"
    )
    assert refused("scale 10001") == "scale: at most 10000 workers, got 10001"
    assert parse_request("scale 10000") == ("scale", {"workers": 10000})


def test_scale_refuses_digits_that_are_not_ascii():
    assert refused("scale \u00b2") == "scale needs a whole number of workers >= 0, got '\u00b2'"
