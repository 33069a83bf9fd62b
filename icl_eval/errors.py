class IclEvalError(Exception):
    """An error the user can fix: the message names the file, field and fix."""
