"""User-facing errors.

Anything a user can fix (a bad path, a corrupt image, a broken annotation, a wrong flag) is
raised as `UserError` with one sentence naming the file and the fix. The CLI prints it as a
single line and exits with status 2: never a traceback for user errors.
"""


class UserError(Exception):
    """An error caused by the user's input; its message says what to fix."""
