"""The arguments of `unicornish status` and `unicornish ctl` (status_args,
ctl_request in unicornish/ctl/client.py, argparse sub-commands built from
ctl/commands.py): what each asks the master, or the usage error."""

from __future__ import annotations

import pytest

from unicornish.ctl.client import (
    CONTROL_ENV,
    CTL_USAGE,
    HelpAsked,
    UsageError,
    ctl_request,
    status_args,
)
from unicornish.ctl.commands import SYNOPSIS


@pytest.fixture(autouse=True)
def no_control_env(monkeypatch):
    monkeypatch.delenv(CONTROL_ENV, raising=False)


def status_error(*args: str) -> str:
    with pytest.raises(UsageError) as caught:
        status_args(list(args))
    return str(caught.value)


def ctl_error(*args: str) -> str:
    with pytest.raises(UsageError) as caught:
        ctl_request(list(args))
    return str(caught.value)


# -- status ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--control", "/run/u.sock"], ("/run/u.sock", None, False, False)),
        (["--control=/run/u.sock", "--json"], ("/run/u.sock", None, True, False)),
        (["--json", "--pid", "u.pid"], (None, "u.pid", True, False)),
        (["--pid=u.pid"], (None, "u.pid", False, False)),
        (["--pid", "u.pid", "--control", "c"], ("c", "u.pid", False, False)),
        (["--control", "a", "--control", "b"], ("b", None, False, False)),  # the last one counts
        (["--ready", "--control", "c"], ("c", None, False, True)),
        (["--control", "c", "--ready", "--json"], ("c", None, True, True)),
        (["--pid", "u.pid", "--ready"], (None, "u.pid", False, True)),
    ],
)
def test_status_arguments(args, expected):
    assert status_args(args) == expected


def test_status_falls_back_to_the_environment_only_without_pid(monkeypatch):
    monkeypatch.setenv(CONTROL_ENV, "/env/ctl.sock")
    assert status_args([]) == ("/env/ctl.sock", None, False, False)
    assert status_args(["--json"]) == ("/env/ctl.sock", None, True, False)
    assert status_args(["--control", "/cli"]) == ("/cli", None, False, False)
    assert status_args(["--pid", "u.pid"]) == (None, "u.pid", False, False)
    assert status_args(["--ready"]) == ("/env/ctl.sock", None, False, True)


def test_status_needs_somewhere_to_look(monkeypatch):
    expected = f"status needs --control PATH or --pid FILE (or ${CONTROL_ENV})"
    assert status_error() == expected
    assert status_error("--json") == expected
    monkeypatch.setenv(CONTROL_ENV, "")  # empty is unset
    assert status_error() == expected


def test_status_usage_errors():
    for args in (["-h"], ["--control", "c", "--help"]):
        with pytest.raises(HelpAsked):  # help is printed, not an error
            status_args(args)
    assert status_error("--control") == "status: argument --control: expected one argument"
    assert status_error("--pid") == "status: argument --pid: expected one argument"
    assert status_error("--control=") == "status: argument --control: expected a non-empty value"
    assert status_error("--control", "") == (
        "status: argument --control: expected a non-empty value"
    )
    assert status_error("--jsn") == "status: unrecognized arguments: --jsn"
    assert status_error("--js") == "status: unrecognized arguments: --js"  # no abbreviations
    assert status_error("--control", "c", "extra") == "status: unrecognized arguments: extra"


# -- ctl -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", ["status", "ttin", "ttou", "reload", "reopen", "upgrade", "metrics", "refork"]
)
def test_ctl_commands_without_arguments(command):
    assert ctl_request(["--control", "/s", command]) == ("/s", {"command": command})
    assert ctl_error("--control", "/s", command, "x") == (
        f"ctl {command}: unrecognized arguments: x"
    )


def test_ctl_scale():
    assert ctl_request(["--control=/s", "scale", "3"]) == ("/s", {"command": "scale", "workers": 3})
    assert ctl_request(["--control=/s", "scale", "0"]) == ("/s", {"command": "scale", "workers": 0})
    # Past what int() takes, the digits go as they are: the master names them in its refusal.
    assert ctl_request(["--control=/s", "scale", "9" * 5000]) == (
        "/s",
        {"command": "scale", "workers": "9" * 5000},
    )
    assert ctl_error("--control=/s", "scale") == (
        "ctl scale: the following arguments are required: N"
    )
    for word in ("x", "-1", "1.5", "\u00b2", ""):
        assert ctl_error("--control=/s", "scale", word) == (
            f"ctl scale: argument N: must be a whole number >= 0, got {word!r}"
        )
    assert ctl_error("--control=/s", "scale", "1", "2") == "ctl scale: unrecognized arguments: 2"


def test_ctl_stop():
    assert ctl_request(["--control", "/s", "stop"]) == ("/s", {"command": "stop", "quick": False})
    assert ctl_request(["--control", "/s", "stop", "--quick"]) == (
        "/s",
        {"command": "stop", "quick": True},
    )
    assert (
        ctl_error("--control", "/s", "stop", "--now") == "ctl stop: unrecognized arguments: --now"
    )
    assert ctl_error("--control", "/s", "stop", "--quick", "x") == (
        "ctl stop: unrecognized arguments: x"
    )


def test_ctl_options_come_before_the_command():
    # After the command word, everything is one of its words, even --control or -h.
    assert ctl_error("--control", "/s", "status", "--control", "/t") == (
        "ctl status: unrecognized arguments: --control /t"
    )
    for args in (["--control", "/s", "reload", "-h"], ["-h"], ["--control", "/s", "--help"]):
        with pytest.raises(HelpAsked):  # -h anywhere asks for help
            ctl_request(args)
    assert ctl_error("--control", "/s", "-v", "status") == "ctl: unrecognized arguments: -v"


def test_ctl_unknown_command():
    assert ctl_error("--control", "/s", "restart").startswith(
        "ctl: argument COMMAND: invalid choice: 'restart' (choose from 'status', 'scale',"
    )


def test_ctl_needs_a_socket_and_a_command(monkeypatch):
    assert ctl_error("status") == f"ctl needs --control PATH (or ${CONTROL_ENV})"
    assert ctl_error("--control") == "ctl: argument --control: expected one argument"
    assert ctl_error("--control=", "status") == (
        "ctl: argument --control: expected a non-empty value"
    )
    assert ctl_error("--control", "/s") == f"ctl needs a COMMAND ({SYNOPSIS}); usage: {CTL_USAGE}"
    monkeypatch.setenv(CONTROL_ENV, "/env/ctl.sock")
    assert ctl_request(["ttin"]) == ("/env/ctl.sock", {"command": "ttin"})
    assert ctl_request(["--control", "/cli", "ttin"]) == ("/cli", {"command": "ttin"})
