"""User-facing errors and warnings: the CLI prints each as one line; an error exits with 2."""


class QaieError(Exception):
    """A problem with what the user gave us (a file, a flag, a checkpoint), not a bug.

    The message names the bad value and, where there is one, the fix.
    """


class QaieWarning(UserWarning):
    """Something the user should know that does not stop the work, e.g. an image converted on
    reading; the CLI prints it as one `warning:` line."""
