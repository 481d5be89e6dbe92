"""The exceptions attnviz raises on purpose; the CLI turns each into one `Error: …` line."""

from __future__ import annotations


class AttnvizError(Exception):
    """A failure while running (exit code 1). The message is shown to the user as is."""

    exit_code = 1


class InputError(AttnvizError, ValueError):
    """Bad usage or bad input: text, options, paths, checkpoints (exit code 2)."""

    exit_code = 2


class Interrupted(AttnvizError):
    """Ctrl-C (or SIGTERM) during a long run that leaves something resumable behind; the
    message says what (exit code 130)."""

    exit_code = 130


class AttnvizWarning(UserWarning):
    """Something the user should know about a result (an assumption, an ignored option);
    the CLI shows it as one ``Warning:`` line on stderr unless --quiet."""
