"""User-facing errors.

A :class:`TokcompileError` is a mistake the user can fix (bad flag, missing file, wrong model).
The CLI prints its message as one line without a traceback and exits with code 1. Anything
else that escapes is an internal error and keeps its traceback.
"""


class TokcompileError(Exception):
    """A user error: the message says what is wrong and how to fix it, in one line."""
