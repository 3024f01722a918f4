"""The project's own error types: what ``run_squad.main`` reports as one line.

Anything else is a bug or an unexpected environment and keeps its traceback.
"""


class UsageError(ValueError):
    """A bad command line or input (flag, file, folder), said in one line; exit code 2.

    A ``ValueError`` too, so library callers that catch bad values keep working."""


class SquadFormatError(UsageError):
    """A SQuAD file that is missing, not JSON, or not SQuAD v1.1; the message names the place."""


class SearchBackendError(RuntimeError):
    """A search backend refused or could not be reached (e.g. SigOpt); exit code 2."""


class DiskFullError(RuntimeError):
    """A write failed because the disk (or quota) is full; what was complete is kept. Exit code 1."""


class StoreError(RuntimeError):
    """The search's results file could not be written (other than a full disk). Exit code 1."""


# Exit code of run_squad.main per error type: 2 for what the user can fix in the command or
# input, 1 for what happened to the disk.
EXIT_CODES = {UsageError: 2, SearchBackendError: 2, DiskFullError: 1, StoreError: 1}
PROJECT_ERRORS = tuple(EXIT_CODES)


def exit_code(err: BaseException) -> int:
    return next(code for kind, code in EXIT_CODES.items() if isinstance(err, kind))
