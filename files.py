"""Files that are whole or absent: the one write-then-rename (``atomic_path``) and its text/JSON
forms, and a full disk recognised as such whatever library reports it."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def new_file_mode() -> int:
    """The permissions an ordinary ``open(path, "w")`` would give (0666 less the umask); temporary
    files from ``mkstemp`` are 0600, so atomically written results get this mode instead."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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
    new one, never half of one; on any failure it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (fsync'd before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_json(path, obj) -> None:
    """Write ``obj`` as indented UTF-8 JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------------
# A full disk, said plainly
# --------------------------------------------------------------------------------------------

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# torch ("unexpected pos"), SQLite and safetensors report a full disk in words of their own.
DISK_FULL_WORDS = ("no space left", "database or disk is full", "disk quota exceeded")
LOW_SPACE_BYTES = 1 << 20


def free_bytes(path) -> int:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _exception_chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def is_disk_full(err: BaseException, path) -> bool:
    """Whether ``err`` (raised while writing under ``path``) comes from a full disk: an ENOSPC
    anywhere in its chain, a library's own words for it, or, for errors that hide the cause
    (torch's ``inline_container.cc ... unexpected pos``), less than 1 MiB left on ``path``."""
    if not isinstance(err, Exception):
        return False  # Ctrl-C is never a full disk
    for e in _exception_chain(err):
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return True
        if any(words in str(e).lower() for words in DISK_FULL_WORDS):
            return True
    try:
        return free_bytes(path) < LOW_SPACE_BYTES
    except OSError:
        return False
