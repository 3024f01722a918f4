"""Files that are whole or absent: the one write-then-rename (``atomic_path``) and its text/JSON
forms, and a full disk recognised as such whatever library reports it."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

from core.errors import DiskFullError, UsageError

# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def new_file_mode() -> int:
    """The permissions an ordinary ``open(path, "w")`` would give (0666 less the umask); temporary
    files from ``mkstemp`` are 0600, so atomically written results get this mode instead."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _temporary_prefix(path: Path, pid: int | str) -> str:
    """Temporaries of ``path`` are ``.<name>.<writer's pid>.<random><suffix>``: a later writer of
    the same file removes those whose writer is gone (killed mid-write)."""
    return f".{path.name}.{pid}."


def process_alive(pid: int) -> bool:
    """Whether the process ``pid`` (a writer named in a temporary's name) still runs."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_stale_temporaries(path) -> list[Path]:
    """Delete the temporaries ``atomic_path`` left beside ``path`` when its writer was killed
    (``kill -9``, a power cut on a local disk); returns what was removed."""
    path = Path(path)
    removed = []
    try:
        candidates = list(path.parent.glob(_temporary_prefix(path, "*") + "*"))
    except OSError:
        return removed
    for tmp in candidates:
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


@contextlib.contextmanager
def temporary_beside(path, suffix: str = ".tmp"):
    """A temporary file beside ``path`` (hidden, named after it and this process, ending in
    ``suffix``), deleted on leaving; a killed writer's are removed by the next one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path, os.getpid()), suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive_lock(path, wait: bool = True):
    """An exclusive ``flock`` on the file ``path`` (made if missing, released when the process
    ends, even by kill -9): yields True while it is held, or False at once when ``wait`` is False
    and another holder has it. The file is opened without following links (a link planted at its
    name is refused, never its target locked), and opened again when the file at ``path`` was
    removed or replaced while this waited, so two holders never lock two files of one name."""
    path = Path(path)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise UsageError(f"{path}: is a link, not a lock file (refusing to follow it); remove the link") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        held = os.fstat(fd)
        try:
            now = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)  # removed or replaced meanwhile: lock the file now at that name
    try:
        yield True
    finally:
        os.close(fd)  # releases the lock


def follow_umask(folder) -> None:
    """Give the files directly in ``folder`` ``new_file_mode()`` (libraries that write through
    temporary files leave them 0600, unreadable to others on a shared machine)."""
    mode = new_file_mode()
    for path in Path(folder).iterdir():
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


@contextlib.contextmanager
def atomic_path(path, suffix: str = ".tmp"):
    """The one write-then-rename of the project: yields a temporary file beside ``path`` (hidden,
    ending in ``suffix``, e.g. ".png" for writers that go by the extension) to write; on success
    it gets ``new_file_mode()`` and is renamed over ``path``, so readers see the old file or the
    new one, never half of one; on any failure it is deleted. Only a regular file (or nothing) is
    ever replaced: a device, folder or link at ``path`` raises ``FileExistsError`` before
    anything is written."""
    path = Path(path)
    check_replaceable(path)
    with temporary_beside(path, suffix) as tmp:
        yield tmp
        os.chmod(tmp, new_file_mode())
        check_replaceable(path)  # it may have changed while we wrote
        os.replace(tmp, path)


def check_replaceable(path: Path) -> None:
    """Raise FileExistsError unless ``path`` is absent or a regular file (not a link, device,
    pipe or folder): the last guard, for callers that did not check with ``output_problem``."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise FileExistsError(errno.EEXIST, "not a regular file; refusing to replace it", str(path))


def output_problem(path, inputs=()) -> str | None:
    """Why ``path`` cannot take a new file written by ``atomic_path``, or None: it must be a new
    or regular file (not a link, device or folder), in a writable folder (mode bits
    too: root may write anywhere; missing folders are made), and none of ``inputs``."""
    path = Path(path)
    if path.is_symlink():
        return "is a link (refusing to replace it; give the file it points to)"
    if path.exists() and not path.is_file():
        return "is a folder" if path.is_dir() else "exists and is not a regular file (refusing to replace it)"
    for other in inputs:
        if other is not None and Path(other).exists() and path.exists() and path.samefile(other):
            return f"is the input file {other}"
    return folder_problem(path.absolute().parent)


def check_output_file(path, flag: str, inputs=()) -> None:
    """``output_problem`` as a UsageError naming the flag, before any work is done."""
    problem = output_problem(path, inputs)
    if problem is not None:
        raise UsageError(f"{flag} {path}: {problem}")


def check_output_dir(out, flag: str = "--output_dir") -> None:
    """An output folder, before any work: a folder, or creatable (not under a file), and writable
    (mode bits too: root may write anywhere; a pseudo file system such as /proc is not). The one
    check of run_squad.py's and ``python -m search.collect``'s ``--output_dir``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out} is a file, not a folder" if out.is_file() else f"{flag} {out} is not a folder")
    existing = _existing(out)
    if not existing.is_dir():
        kind = "a file" if existing.is_file() else "not a folder"
        raise UsageError(f"{flag} {out} lies under {existing}, which is {kind}")
    if not writable_folder(existing):
        raise UsageError(f"{flag} {out}: {existing} is not writable")


def folder_problem(folder) -> str | None:
    """Why files cannot be written into ``folder``, or None: it must be a writable folder, or
    missing under one (missing folders are made on writing)."""
    existing = _existing(folder)
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not writable_folder(existing):
        return f"{existing} is not writable"
    return None


def writable_folder(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (fsync'd before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_json(path, obj) -> None:
    """Write ``obj`` as indented UTF-8 JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def writing(folder, what: str, write):
    """``write()``, with a full disk or an unwritable place said in one line."""
    try:
        return write()
    except OSError as err:
        if is_disk_full(err, folder):
            raise DiskFullError(f"no space left on {folder} while writing {what}") from None
        raise UsageError(f"{what}: cannot write ({err})") from None


# --------------------------------------------------------------------------------------------
# A full disk, said plainly
# --------------------------------------------------------------------------------------------

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# torch ("unexpected pos"), SQLite and safetensors report a full disk in words of their own.
DISK_FULL_WORDS = ("no space left", "database or disk is full", "disk quota exceeded")
LOW_SPACE_BYTES = 1 << 20


def _existing(path) -> Path:
    """``path``, or its nearest existing parent."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path) -> int:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    return shutil.disk_usage(_existing(path)).free


def _pseudo_file_system(path) -> bool:
    """``/proc``, ``/sys`` and the like: no space at all, which is not a full disk."""
    return shutil.disk_usage(_existing(path)).total == 0


def _exception_chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def is_disk_full(err: BaseException, path) -> bool:
    """Whether ``err`` (raised while writing under ``path``) comes from a full disk: an ENOSPC
    anywhere in its chain, a library's own words for it, or, for errors that hide the cause
    (torch's ``inline_container.cc ... unexpected pos``), less than 1 MiB left on ``path``. An
    error that names another cause (EACCES, EROFS, ...) is not one, nor is a write refused by a
    pseudo file system (``/proc``, whose size is 0)."""
    if not isinstance(err, Exception):
        return False  # Ctrl-C is never a full disk
    chain = list(_exception_chain(err))
    for e in chain:
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return True
        if any(words in str(e).lower() for words in DISK_FULL_WORDS):
            return True
    if any(isinstance(e, OSError) and e.errno is not None for e in chain):
        return False  # the system said what went wrong, and it was not space
    try:
        return free_bytes(path) < LOW_SPACE_BYTES and not _pseudo_file_system(path)
    except OSError:
        return False
