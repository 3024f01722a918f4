"""The project's own error types, their exit codes, and ``cli_main``: how every command of the
project reports them (one line on stderr). Anything else is a bug or an unexpected environment
and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable


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


# Exit code of a command per error type: 2 for what the user can fix in the command or
# input, 1 for what happened to the disk.
EXIT_CODES = {UsageError: 2, SearchBackendError: 2, DiskFullError: 1, StoreError: 1}
PROJECT_ERRORS = tuple(EXIT_CODES)


def exit_code(err: BaseException) -> int:
    return next(code for kind, code in EXIT_CODES.items() if isinstance(err, kind))


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (a library's can run to pages), or its type."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def cli_main(prog: str, run: Callable[[], object], on_os_error: Callable[[OSError], str | None] | None = None) -> int:
    """Run a command's body: 0, or the project's errors as one line ``PROG: error: ...`` on stderr
    with their exit code. ``on_os_error``: the message of an OSError the command can name (a full
    disk), or None to keep its traceback."""
    try:
        run()
    except PROJECT_ERRORS as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return exit_code(err)
    except OSError as err:
        message = on_os_error(err) if on_os_error is not None else None
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1
    return 0
