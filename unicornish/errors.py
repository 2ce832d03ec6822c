"""The two kinds of bad input, told apart by their exit code."""


class UsageError(Exception):
    """The command line is wrong: exit 2."""

    exit_code = 2


class StartupError(Exception):
    """The command line is fine but something it names is not: exit 1."""

    exit_code = 1
