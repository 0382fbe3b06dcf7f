"""User-facing errors.

Anything a user can fix (a bad path, a corrupt image, a broken annotation, a wrong flag) is
raised as `UserError` with one sentence naming the file and the fix. The CLI prints it as a
single line and exits with status 2: never a traceback for user errors. `Interrupted` (status
130) says what an interrupted run saved.
"""


class UserError(Exception):
    """An error caused by the user's input; its message says what to fix."""

    def __init__(self, message: str = "") -> None:
        # one line whatever it quotes (a file name or a YAML error with line breaks)
        super().__init__(" ".join(part.strip() for part in str(message).splitlines() if part.strip()))


class Interrupted(Exception):
    """A run stopped by SIGINT / SIGTERM; the message says what was saved and the command that
    continues. The CLI prints it as one line and exits with status 130."""
