"""ONNX files of a model folder, exported (and quantised) once and kept in a per-user cache folder.

    path = exported_file("out/checkpoint-best", (1.0, 1.0, 0.8, 0.6, 0.5, 0.4), int8=True)

A file is named by a hash of what it is made from (its key): the folder's ``config.json`` and
weight files (their bytes), the length configuration, the precision and int8 settings, and the
torch, onnxruntime and export-format versions. Changing any of them gives a new file; an existing
one is reused after checking it. Beside each ``<key>.onnx`` lies ``<key>.json``, its record: the
sha256 of the file's bytes and what it was made from. A file whose bytes do not match its record
(edited, truncated, half-copied) is rebuilt with a warning, never used.

One file per key: a writer holds ``<key>.lock`` (``flock``) while it checks and builds, so
concurrent runs wait for the first and then use its file. Files are written by rename
(``files.atomic_path``); a killed writer's temporaries are removed by the next writer of that file
or by ``clear_cache``. ``inference.py --list_cache`` / ``--clear_cache`` show and empty the folder.
Used by ``inference.py --int8`` and ``inference.onnx_question_answerer`` (bench).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from core import files
from serving.onnx import metadata as onnx_metadata
from serving.onnx import int8 as onnx_int8
from serving.onnx.int8 import Int8Settings
from core.checks import WEIGHT_FILES
from core.hashing import file_sha256

logger = logging.getLogger("onnx_cache")

CACHE_ENV = "DYNAMIC_TINYBERT_ONNX_CACHE"


def default_cache_dir() -> Path:
    """$DYNAMIC_TINYBERT_ONNX_CACHE, else ``$XDG_CACHE_HOME/dynamic_tinybert/onnx`` (by default
    ``~/.cache/dynamic_tinybert/onnx``): the user's own folder, not a shared temporary one."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dynamic_tinybert" / "onnx"


def folder_fingerprint(folder) -> str:
    """sha256 of the folder's config.json and weight files (names and bytes)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in ("config.json", *WEIGHT_FILES):
        if (folder / name).is_file():
            digest.update(name.encode() + b"\0" + file_sha256(folder / name).encode())
    return digest.hexdigest()


def _versions() -> list[str]:
    import onnxruntime
    import torch

    return [torch.__version__, onnxruntime.__version__, str(onnx_metadata.EXPORT_FORMAT_VERSION)]


def _key(parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


# --------------------------------------------------------------------------------------------
# Getting a file
# --------------------------------------------------------------------------------------------

def exported_file(folder, length_config=None, int8: bool = False, int8_settings: Int8Settings = Int8Settings(),
                  cache_dir=None) -> Path:
    """The ONNX file of the model in ``folder`` at ``length_config`` (validated as the caller
    wants; None: full length), float32 or int8, exported into ``cache_dir`` unless a checked one
    is there."""
    from serving.onnx import export as onnx_export
    from core.models import load_model_checked

    cache = _cache(cache_dir)
    config = None if length_config is None else list(length_config)
    fp32_key = _key([folder_fingerprint(folder), config, _versions()])
    made_from = {"model": str(Path(folder).absolute()), "length_config": config}

    def export(path):
        onnx_export.export_onnx(load_model_checked(str(folder), "--model"), path, length_config)
    fp32 = _cached(cache, fp32_key, export, {**made_from, "precision": "fp32"})
    if not int8:
        return fp32
    # keyed by what the float32 file is made from, not its bytes: one int8 file per model and configuration
    return _cached(cache, _key([fp32_key, int8_settings.key(), _versions()]) + "-int8",
                   lambda path: onnx_int8.quantize_int8(fp32, path, int8_settings),
                   {**made_from, "precision": "int8", "int8_settings": int8_settings.key()})


def int8_file(fp32_file, int8_settings: Int8Settings = Int8Settings(), cache_dir=None) -> Path:
    """The int8 form of the float32 ONNX file ``fp32_file`` (keyed by its bytes), quantised into
    ``cache_dir`` unless a checked one is there."""
    cache = _cache(cache_dir)
    key = _key([file_sha256(fp32_file), int8_settings.key(), _versions()]) + "-int8"
    return _cached(cache, key, lambda path: onnx_int8.quantize_int8(fp32_file, path, int8_settings),
                   {"onnx": str(Path(fp32_file).absolute()), "precision": "int8",
                    "int8_settings": int8_settings.key()})


def _cache(cache_dir) -> Path:
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    return cache


def _cached(cache: Path, key: str, build, made_from: dict) -> Path:
    """``<key>.onnx`` in ``cache``: used when its bytes match its record, else built by
    ``build(path)`` (with a warning when a file was there), with the lock on the key held."""
    path, record = cache / f"{key}.onnx", cache / f"{key}.json"
    with _locked(cache / f"{key}.lock"):
        problem = _check(path, record)
        if problem is None:
            return path
        if path.exists():
            logger.warning("the cached ONNX file %s %s; building it again", path, problem)
        build(path)
        files.atomic_write_json(record, {"sha256": file_sha256(path), "bytes": path.stat().st_size,
                                         "made_from": made_from})
    return path


def _check(path: Path, record: Path) -> str | None:
    """Why the cached file cannot be used, or None."""
    if not path.is_file():
        return "is missing"
    try:
        expected = json.loads(record.read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return "has no readable record of its content"
    if file_sha256(path) != expected:
        return "does not hold what was written (its sha256 differs from its record)"
    return None


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive ``flock`` on ``path`` (released when the process ends, even by kill -9)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# Seeing and clearing the folder
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CachedFile:
    path: Path
    bytes: int
    made_from: dict | None  # None: no readable record (the file is rebuilt before use)


def list_cache(cache_dir=None) -> list[CachedFile]:
    """The ONNX files in the cache folder, with what each was made from."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entries = []
    for path in sorted(cache.glob("[!.]*.onnx")) if cache.is_dir() else ():  # not writers' temporaries
        try:
            made_from = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))["made_from"]
        except (OSError, ValueError, KeyError, TypeError):
            made_from = None
        entries.append(CachedFile(path, path.stat().st_size, made_from))
    return entries


def clear_cache(cache_dir=None) -> int:
    """Delete the cache folder's files (ONNX files, records, locks, killed writers'
    temporaries) and nothing else; returns the bytes freed."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    freed = 0
    if not cache.is_dir():
        return freed
    for path in cache.iterdir():
        ours = path.suffix in (".onnx", ".json", ".lock", ".tmp") and path.is_file() and not path.is_symlink()
        if ours:
            freed += path.stat().st_size
            path.unlink()
    return freed
