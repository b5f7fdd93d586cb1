"""User-facing errors.

Every problem a user can fix (a missing dataset, an unknown name, a bad checkpoint) is raised
as :class:`NgfkitError` with one line that names the problem and the fix. The CLI prints that
line and exits with status 2 instead of showing a traceback.
"""


class NgfkitError(Exception):
    """A problem with the user's input, described in one line that names the fix."""
