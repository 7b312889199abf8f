"""Errors that entry points turn into one clear line instead of a traceback."""


class UserError(Exception):
    """A problem with something the user gave us: a path, a file, a config, a checkpoint."""


class DataError(UserError):
    """A data file is missing, corrupt or does not match the competition's format."""


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable or belongs to another task."""
