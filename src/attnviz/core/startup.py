"""Ctrl-C while the ``attnviz`` program is still starting (importing its modules, before a
command runs) ends it with one ``Error: interrupted`` line and exit code 130, not a Python
traceback. Nothing has been written then, so there is nothing to clean up.

``attnviz/__init__.py`` imports this module first; it changes nothing unless the process
is the program itself (the console script or ``python -m attnviz``), so ``import attnviz``
in a notebook or a script keeps Python's own Ctrl-C. ``done()`` hands Ctrl-C back to
Python (a ``KeyboardInterrupt``) when the command starts.
"""

from __future__ import annotations

import os
import signal
import sys


def _is_the_program() -> bool:
    command = getattr(sys, "orig_argv", [])
    return (os.path.basename(sys.argv[0] if sys.argv else "") == "attnviz"
            or command[1:3] == ["-m", "attnviz"])


def _interrupted(signum, frame) -> None:
    os.write(2, b"Error: interrupted\n")
    os._exit(130)


def done() -> None:
    """The command starts: Ctrl-C raises ``KeyboardInterrupt`` again."""
    if signal.getsignal(signal.SIGINT) is _interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)


if _is_the_program() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted)
