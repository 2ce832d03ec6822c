import os
import sys
from typing import NoReturn

# The third-party modules of pyproject.toml's `dependencies`. bin/unicornish
# falls back to the system python3 when the checkout has no .venv yet, and a
# traceback ending in ModuleNotFoundError does not say what to run.
DEPENDENCIES = ("psutil", "setproctitle")


def missing_dependency(name: str) -> NoReturn:
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.stderr.write(
        f"unicornish: error: Python module {name} is missing for {sys.executable}: "
        f"run `make run` in {checkout} (it sets up .venv), or `pip install -e {checkout}`\n"
    )
    raise SystemExit(1)


try:
    # Imported here first so that a missing one is named before anything runs;
    # setproctitle would otherwise be found missing only once the master starts.
    import psutil  # noqa: F401
    import setproctitle  # noqa: F401

    from unicornish.cli import main
except ModuleNotFoundError as exc:
    if exc.name not in DEPENDENCIES:
        raise
    missing_dependency(exc.name or "")

if __name__ == "__main__":
    main()
