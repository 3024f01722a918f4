"""ONNX files of a model folder, exported (and quantised) once and kept in a per-user cache folder.

    path = exported_file("out/checkpoint-best", (1.0, 1.0, 0.8, 0.6, 0.5, 0.4), int8=True)

A file is named by a hash of what it is made from (its key): the folder's ``config.json`` and
weight files (their bytes), the length configuration, the precision and int8 settings, and the
torch, onnxruntime and export-format versions. Changing any of them gives a new file; an existing
one is reused after checking it. Beside each ``<key>.onnx`` lies ``<key>.json``, its record: the
sha256 of the file's bytes and what it was made from. A file whose bytes do not match its record
(edited, truncated, half-copied), or whose record or own metadata names another length
configuration, precision or int8 kind than asked (an entry copied over another), is rebuilt with a
warning, never used.

One file per key: a writer holds ``<key>.lock`` (``flock``) while it checks and builds, so
concurrent runs wait for the first and then use its file. Files are written by rename
(``files.atomic_path``); a killed writer's temporaries are removed by the next writer of that file
or by ``clear_cache``, which deletes each entry holding its lock (``files.exclusive_lock``, which
never follows a link) and leaves entries being written alone. ``inference.py --list_cache`` / ``--clear_cache`` show and empty the folder.
Used by ``inference.py --int8`` and ``inference.onnx_question_answerer`` (bench).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from core import files
from serving.onnx import metadata as onnx_metadata
from serving.onnx import int8 as onnx_int8
from serving.onnx.int8 import Int8Settings
from core.checks import SCORERS_FILE, WEIGHT_FILES
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
    """sha256 of the folder's config.json and weight files (names and bytes), the learned
    criterion's token scorers included."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in ("config.json", *WEIGHT_FILES, SCORERS_FILE):
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
                  cache_dir=None, calibration=None) -> Path:
    """The ONNX file of the model in ``folder`` at ``length_config`` (validated as the caller
    wants; None: full length), float32 or int8 (static: calibrated on ``calibration``, whose sha256
    the settings' key holds), exported into ``cache_dir`` unless a checked one is there."""
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
                   lambda path: onnx_int8.quantize_int8(fp32, path, int8_settings, calibration),
                   {**made_from, "precision": "int8", "int8_settings": int8_settings.key()})


def int8_file(fp32_file, int8_settings: Int8Settings = Int8Settings(), cache_dir=None, calibration=None) -> Path:
    """The int8 form of the float32 ONNX file ``fp32_file`` (keyed by its bytes), quantised into
    ``cache_dir`` unless a checked one is there."""
    cache = _cache(cache_dir)
    source_sha256 = file_sha256(fp32_file)
    props, _ = onnx_metadata.file_parts(fp32_file)
    length_config = onnx_metadata.OnnxMetadata.from_props(props).length_config
    key = _key([source_sha256, int8_settings.key(), _versions()]) + "-int8"
    return _cached(cache, key, lambda path: onnx_int8.quantize_int8(fp32_file, path, int8_settings, calibration),
                   {"onnx": str(Path(fp32_file).absolute()), "onnx_sha256": source_sha256,
                    "length_config": None if length_config is None else list(length_config),
                    "precision": "int8", "int8_settings": int8_settings.key()})


def _cache(cache_dir) -> Path:
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    return cache


# what a record's ``made_from`` names only to be shown: the entry's key already holds its content
_SHOWN_ONLY = ("model", "onnx")


def _cached(cache: Path, key: str, build, made_from: dict) -> Path:
    """``<key>.onnx`` in ``cache``: used when its bytes match its record and both are what
    ``made_from`` asks for, else built by ``build(path)`` (with a warning when a file was there),
    with the lock on the key held."""
    path, record = cache / f"{key}.onnx", cache / f"{key}.json"
    with _locked(cache / f"{key}.lock"):
        problem = _check(path, record, made_from)
        if problem is None:
            return path
        if path.exists():
            logger.warning("the cached ONNX file %s %s; building it again", path, problem)
        build(path)
        files.atomic_write_json(record, {"sha256": file_sha256(path), "bytes": path.stat().st_size,
                                         "made_from": made_from})
    return path


def _check(path: Path, record: Path, made_from: dict) -> str | None:
    """Why the cached file cannot be used, or None: it must be a regular file whose bytes match
    its record, the record must say it was made from what ``made_from`` asks for, and the file's
    own metadata must say so too (an entry copied from another key agrees with its record). An
    entry whose ``made_from`` names no precision (not an export) is checked by its record alone."""
    if path.is_symlink() or not path.is_file():
        return "is missing" if not os.path.lexists(path) else "is not a regular file"
    try:
        stored = json.loads(record.read_text(encoding="utf-8"))
        expected, recorded = stored["sha256"], stored["made_from"]
    except (OSError, ValueError, KeyError, TypeError):
        return "has no readable record of its content"
    if file_sha256(path) != expected:
        return "does not hold what was written (its sha256 differs from its record)"
    wanted = {k: v for k, v in made_from.items() if k not in _SHOWN_ONLY}
    if not isinstance(recorded, dict) or {k: recorded.get(k) for k in wanted} != wanted:
        return f"is recorded as made from {json.dumps(recorded)}, not {json.dumps(wanted)}"
    if "precision" not in made_from:
        return None
    try:
        metadata = onnx_metadata.OnnxMetadata.from_props(onnx_metadata.file_parts(path)[0])
        onnx_metadata.check_length_config_of(metadata, made_from.get("length_config"))
        onnx_metadata.check_graph_of(metadata, path)
    except (OSError, KeyError, TypeError, ValueError) as err:
        return f"is not what was asked for ({err})"
    held = (metadata.precision, metadata.int8_settings)
    asked = (made_from["precision"], made_from.get("int8_settings"))
    if held != asked:
        return f"holds precision {held[0]} with int8 settings {held[1]}, not {asked[0]} with {asked[1]}"
    return None


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive ``flock`` on ``path`` (``files.exclusive_lock``: a link there is refused)."""
    with files.exclusive_lock(path):
        yield


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


_SUFFIXES = (".onnx", ".json", ".lock", ".tmp")
_TEMPORARY = re.compile(r"^\.(?P<target>.+?\.(?:onnx|json))\.\d+\.")  # files.atomic_path's


def clear_cache(cache_dir=None) -> int:
    """Delete the cache folder's entries (ONNX files, records, locks), killed writers'
    temporaries and links planted at our names (the link, never what it points to), and nothing
    else; returns the bytes freed. Each entry is deleted holding its lock: an entry another run
    is writing (its lock held) is left as it is with a warning, and so are live writers'
    temporaries."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    freed = 0
    if not cache.is_dir():
        return freed
    names = [path for path in cache.iterdir() if path.suffix in _SUFFIXES]
    sizes = {p: p.stat().st_size for p in names if p.name.startswith(".") and p.is_file() and not p.is_symlink()}
    for target in sorted({m["target"] for m in map(_TEMPORARY.match, (p.name for p in sizes)) if m}):
        freed += sum(sizes.get(p, 0) for p in files.remove_stale_temporaries(cache / target))
    for stem in sorted({p.stem for p in names if not p.name.startswith(".")}):
        lock = cache / f"{stem}.lock"
        if lock.is_symlink():
            lock.unlink()  # planted: removed, its target untouched
        with files.exclusive_lock(lock, wait=False) as held:
            if not held:
                logger.warning("%s is being written by another run; left as it is", cache / stem)
                continue
            for path in (cache / f"{stem}{suffix}" for suffix in _SUFFIXES):
                if path.is_symlink() or path.is_file():
                    freed += 0 if path.is_symlink() else path.stat().st_size
                    path.unlink()
    return freed
