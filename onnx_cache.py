"""ONNX files of a model folder, exported (and quantised) once and kept in a temporary folder.

    path = exported_file("out/checkpoint-best", (1.0, 1.0, 0.8, 0.6, 0.5, 0.4), int8=True)

A file is named by a hash of what it is made from: the folder's ``config.json`` and weight files
(their bytes), the length configuration, the precision and int8 settings, and the torch,
onnxruntime and export-format versions. Changing any of them gives a new file; an existing one is
reused. Files are written by rename, so concurrent runs at worst export twice.
Used by ``inference.py --int8`` (torch backend) and ``inference.onnx_question_answerer`` (bench).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import onnx_export
from onnx_export import Int8Settings

CACHE_ENV = "DYNAMIC_TINYBERT_ONNX_CACHE"
_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """$DYNAMIC_TINYBERT_ONNX_CACHE, else ``<tmp>/dynamic_tinybert_onnx``."""
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "dynamic_tinybert_onnx")


def _hash_file(digest, path: Path) -> None:
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)


def folder_fingerprint(folder) -> str:
    """sha256 of the folder's config.json and weight files (names and bytes)."""
    from inference import WEIGHT_FILES

    folder = Path(folder)
    digest = hashlib.sha256()
    for name in ("config.json", *WEIGHT_FILES):
        if (folder / name).is_file():
            digest.update(name.encode() + b"\0")
            _hash_file(digest, folder / name)
    return digest.hexdigest()


def _versions() -> list[str]:
    import onnxruntime
    import torch

    return [torch.__version__, onnxruntime.__version__, str(onnx_export.EXPORT_FORMAT_VERSION)]


def _name(parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def exported_file(folder, length_config=None, int8: bool = False, int8_settings: Int8Settings = Int8Settings(),
                  cache_dir=None) -> Path:
    """The ONNX file of the model in ``folder`` at ``length_config`` (validated as the caller
    wants; None: full length), float32 or int8, exported into ``cache_dir`` unless already there."""
    from loading import load_model_checked

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    config = None if length_config is None else list(length_config)
    fp32 = cache / f"{_name([folder_fingerprint(folder), config, _versions()])}.onnx"
    if not fp32.is_file():
        model = load_model_checked(str(folder), "--model")
        onnx_export.export_onnx(model, fp32, length_config)
    return int8_file(fp32, int8_settings, cache) if int8 else fp32


def int8_file(fp32_file, int8_settings: Int8Settings = Int8Settings(), cache_dir=None) -> Path:
    """The int8 form of the float32 ONNX file ``fp32_file``, quantised into ``cache_dir`` unless
    already there."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha256()
    _hash_file(digest, Path(fp32_file))
    path = cache / f"{_name([digest.hexdigest(), int8_settings.key(), _versions()])}-int8.onnx"
    if not path.is_file():
        onnx_export.quantize_int8(fp32_file, path, int8_settings)
    return path
