"""The one exception type for errors a user can fix (bad file, unknown id, bad recipe key,
missing model): the CLI prints its message as one line and exits 1, never a traceback."""


class GcpoError(Exception):
    """An error the user can fix."""
