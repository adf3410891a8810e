"""The one exception type for mistakes a user can fix: printed as one line, exit code 2."""


class UserError(Exception):
    """A bad flag, file, row or name. The message alone must tell the user what to fix."""
