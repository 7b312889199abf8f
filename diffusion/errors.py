"""Errors that entry points turn into one clear line instead of a traceback."""


class UserError(Exception):
    """A problem with something the user gave us: a path, a file, a config, a checkpoint."""


class DataError(UserError):
    """A data file is missing, corrupt or does not match the competition's format."""


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable or belongs to another task."""


def run_cli(main) -> None:
    """Run an entry point's `main()`: a UserError becomes one line `error: ...` on stderr and exit status 2."""
    import sys

    try:
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)
