"""`unicornish status` and `unicornish ctl`: talking to a running master."""

from __future__ import annotations

import sys


def main(args: list[str]) -> int:
    sys.stderr.write(f"unicornish: error: '{args[0]}' needs a control socket, not built yet\n")
    return 2
