"""The user-facing error type: the CLI prints its message on one line and exits with 2."""


class QaieError(Exception):
    """A problem with what the user gave us (a file, a flag, a checkpoint), not a bug.

    The message names the bad value and, where there is one, the fix.
    """
