"""The error type for user mistakes: the CLI prints its message as one line instead of a traceback."""


class CTranError(Exception):
    """A problem the user can fix (bad path, bad option, unknown label); its message says how."""
