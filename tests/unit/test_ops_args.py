"""The arguments of `unicornish status` and `unicornish ctl` (parse_status,
parse_ctl in unicornish/ctl/client.py): what each asks the master, or the usage error."""

from __future__ import annotations

import pytest

from unicornish.ctl.client import (
    CONTROL_ENV,
    CTL_USAGE,
    STATUS_USAGE,
    HelpAsked,
    UsageError,
    parse_ctl,
    parse_status,
)


@pytest.fixture(autouse=True)
def no_control_env(monkeypatch):
    monkeypatch.delenv(CONTROL_ENV, raising=False)


def status_error(*args: str) -> str:
    with pytest.raises(UsageError) as caught:
        parse_status(list(args))
    return str(caught.value)


def ctl_error(*args: str) -> str:
    with pytest.raises(UsageError) as caught:
        parse_ctl(list(args))
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
    assert parse_status(args) == expected


def test_status_falls_back_to_the_environment_only_without_pid(monkeypatch):
    monkeypatch.setenv(CONTROL_ENV, "/env/ctl.sock")
    assert parse_status([]) == ("/env/ctl.sock", None, False, False)
    assert parse_status(["--json"]) == ("/env/ctl.sock", None, True, False)
    assert parse_status(["--control", "/cli"]) == ("/cli", None, False, False)
    assert parse_status(["--pid", "u.pid"]) == (None, "u.pid", False, False)
    assert parse_status(["--ready"]) == ("/env/ctl.sock", None, False, True)


def test_status_needs_somewhere_to_look(monkeypatch):
    expected = f"status needs --control PATH or --pid FILE (or ${CONTROL_ENV})"
    assert status_error() == expected
    assert status_error("--json") == expected
    monkeypatch.setenv(CONTROL_ENV, "")  # empty is unset
    assert status_error() == expected


def test_status_usage_errors():
    for args in (["-h"], ["--control", "c", "--help"]):
        with pytest.raises(HelpAsked):  # help is printed, not an error
            parse_status(args)
    assert status_error("--control") == "argument --control: expected one argument"
    assert status_error("--pid") == "argument --pid: expected one argument"
    assert status_error("--control=") == "argument --control: expected a non-empty value"
    assert status_error("--control", "") == "argument --control: expected a non-empty value"
    assert status_error("--jsn") == f"status: unrecognized argument '--jsn'; {STATUS_USAGE}"
    assert status_error("--control", "c", "extra").startswith(
        "status: unrecognized argument 'extra'"
    )


# -- ctl -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", ["status", "ttin", "ttou", "reload", "reopen", "upgrade", "metrics"]
)
def test_ctl_commands_without_arguments(command):
    assert parse_ctl(["--control", "/s", command]) == ("/s", {"command": command})
    assert ctl_error("--control", "/s", command, "x") == (
        f"ctl {command} takes no argument, got 'x'"
    )


def test_ctl_scale():
    assert parse_ctl(["--control=/s", "scale", "3"]) == ("/s", {"command": "scale", "workers": 3})
    assert parse_ctl(["--control=/s", "scale", "0"]) == ("/s", {"command": "scale", "workers": 0})
    for rest in ([], ["x"], ["-1"], ["1.5"], ["1", "2"]):
        assert (
            ctl_error("--control=/s", "scale", *rest) == "ctl scale needs one whole number N >= 0"
        )


def test_ctl_stop():
    assert parse_ctl(["--control", "/s", "stop"]) == ("/s", {"command": "stop", "quick": False})
    assert parse_ctl(["--control", "/s", "stop", "--quick"]) == (
        "/s",
        {"command": "stop", "quick": True},
    )
    assert (
        ctl_error("--control", "/s", "stop", "--now") == "ctl stop takes only --quick, got '--now'"
    )
    assert ctl_error("--control", "/s", "stop", "--quick", "x") == (
        "ctl stop takes only --quick, got '--quick x'"
    )


def test_ctl_options_come_before_the_command():
    # After the command word, everything is one of its words, even --control or -h.
    assert ctl_error("--control", "/s", "status", "--control", "/t") == (
        "ctl status takes no argument, got '--control /t'"
    )
    for args in (["--control", "/s", "reload", "-h"], ["-h"], ["--control", "/s", "--help"]):
        with pytest.raises(HelpAsked):  # -h anywhere asks for help
            parse_ctl(args)
    assert ctl_error("--control", "/s", "-v", "status") == (
        f"ctl: unrecognized argument '-v'; {CTL_USAGE}"
    )


def test_ctl_unknown_command():
    assert ctl_error("--control", "/s", "restart") == f"ctl: unknown command 'restart'; {CTL_USAGE}"


def test_ctl_needs_a_socket_and_a_command(monkeypatch):
    assert ctl_error("status") == f"ctl needs --control PATH (or ${CONTROL_ENV})"
    assert ctl_error("--control") == "argument --control: expected one argument"
    assert ctl_error("--control=", "status") == "argument --control: expected a non-empty value"
    assert ctl_error("--control", "/s") == f"ctl needs a COMMAND; {CTL_USAGE}"
    monkeypatch.setenv(CONTROL_ENV, "/env/ctl.sock")
    assert parse_ctl(["ttin"]) == ("/env/ctl.sock", {"command": "ttin"})
    assert parse_ctl(["--control", "/cli", "ttin"]) == ("/cli", {"command": "ttin"})
