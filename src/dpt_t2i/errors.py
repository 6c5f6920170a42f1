"""Errors the command line reports in one line with exit status 2."""


class UsageError(ValueError):
    """Bad input from the user: the message names what is wrong and what is expected."""
