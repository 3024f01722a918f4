"""A PostgreSQL server for the tests of searches shared by several machines.

The server is the one at $DYNAMIC_TINYBERT_TEST_POSTGRES_URL (``.ci/run`` installs Debian's
``postgresql``, starts it and sets it; the role needs CREATEDB), else a throwaway one started from
the installed binaries (``initdb``, ``pg_ctl``; as the ``postgres`` user when the tests run as
root) in a temporary folder and stopped at the end. Each test gets its own new database, so tests
in parallel (pytest-xdist) never share a study. Without a server or the ``psycopg`` driver the
tests skip, saying why.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

ENV = "DYNAMIC_TINYBERT_TEST_POSTGRES_URL"


def _binaries() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    return Path(folders[-1]) if folders and Path(folders[-1], "initdb").exists() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its binaries as the postgres user then."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextlib.contextmanager
def throwaway_server():
    """Start a server in a new temporary folder; yield its URL (or a reason it could not start)."""
    binaries = _binaries()
    if binaries is None:
        yield None, f"no PostgreSQL server: set {ENV} or install PostgreSQL (Debian: apt-get install postgresql)"
        return
    folder = Path(tempfile.mkdtemp(prefix="dtb-postgres-"))
    data = folder / "data"
    port = _free_port()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    pg_ctl = _as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w"])
    try:
        subprocess.run(_as_server_user([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]),
                       check=True, capture_output=True, timeout=120)
        subprocess.run(pg_ctl + ["-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as err:
        shutil.rmtree(folder, ignore_errors=True)
        yield None, f"could not start a PostgreSQL server from {binaries}: {err}"
        return
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", None
    finally:
        subprocess.run(pg_ctl + ["-m", "immediate", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def _with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


@contextlib.contextmanager
def new_database(server_url: str):
    """A new, empty database on the server (dropped afterwards); yields its SQLAlchemy URL."""
    import psycopg

    conninfo = server_url.replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"dtb_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(server_url, name)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def postgres_server():
    """The server's URL (to its maintenance database); skips the test when there is none."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("the psycopg driver is not installed (pip install 'psycopg[binary]')")
    url = os.environ.get(ENV)
    if url:
        yield url
        return
    with throwaway_server() as (url, reason):
        if url is None:
            pytest.skip(reason)
        yield url


@pytest.fixture
def postgres_url(postgres_server):
    """A new database of its own for one test: its SQLAlchemy URL."""
    with new_database(postgres_server) as url:
        yield url
