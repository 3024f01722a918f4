"""What inference.py and the ``QuestionAnswerer`` API check before anything loads: the model
folder and its config, the windows it was trained on, the texts asked about, the backend flags.
No torch and no transformers here, so the command line's errors and its ONNX Runtime answers
(``quick_answer``) come without their imports.
"""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import length_drop
from core.errors import UsageError
from training.settings import check_device
from training.settings import check_model_folder as check_saved_model

BACKENDS = ("torch", "onnxruntime")
WINDOW_DEFAULTS = {"max_seq_length": 384, "doc_stride": 128, "max_query_length": 64}  # the reference's


def check_model_folder(folder) -> Path:
    """The folder, or a UsageError naming what is missing or broken (the rules run_squad.py
    applies to its model folders: a JSON config.json, a weights file whose header is whole)."""
    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"--model {folder}: not a folder")
    check_saved_model(path, "--model")
    return path


def checked_length_config(value, num_hidden_layers: int, max_seq_length: int):
    """None, or the configuration validated by ``length_drop.parse_length_config``."""
    if value is None:
        return None
    try:
        return length_drop.parse_length_config(value, num_hidden_layers, max_seq_length)
    except ValueError as err:
        raise UsageError(f"--length_config: {err}") from None


def read_model_config(folder) -> dict:
    """The folder's config.json (checked to name the layer count), or a UsageError."""
    path = check_model_folder(folder)
    try:
        config = json.loads((path / "config.json").read_text())
        int(config["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"--model {folder}: unreadable config.json ({err})") from None
    return config


def window_settings(folder, max_seq_length=None, doc_stride=None, max_query_length=None) -> dict:
    """The windows features are cut into: each setting as given, else as the model was trained
    (``training_args.json``, which every checkpoint of run_squad.py carries), else the reference's
    default (384, 128, 64). A model answers best on the windows it was trained and searched on."""
    trained = {}
    path = Path(folder) / "training_args.json"
    if path.is_file():
        try:
            trained = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UsageError(f"--model {folder}: unreadable training_args.json ({err})") from None
    given = {"max_seq_length": max_seq_length, "doc_stride": doc_stride, "max_query_length": max_query_length}
    settings = {}
    for name, value in given.items():
        if value is None:
            value = trained.get(name) if isinstance(trained, dict) else None
        if value is None:
            value = WINDOW_DEFAULTS[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UsageError(f"--{name} must be a positive integer, got {value!r}")
        settings[name] = value
    return settings


def check_text(text, where: str, what: str) -> None:
    """A question or context: a string, valid UTF-8 (a command line can carry other bytes), and
    not blank. Blank is what the tokenizer keeps nothing of: whitespace and invisible characters
    (zero-width spaces and other format or control characters, which BERT's tokenizer drops)."""
    if not isinstance(text, str):
        raise UsageError(f"{where}: the {what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise UsageError(f"{where}: the {what} is not UTF-8 text (a byte that is not UTF-8 at character "
                         f"{err.start})") from None
    if all(c.isspace() or unicodedata.category(c).startswith("C") for c in text):
        raise UsageError(f"{where}: empty {what} (nothing but whitespace or invisible characters)")


def check_backend(backend: str, onnx_path, int8: bool, device: str) -> None:
    """The backend combinations that exist, or a UsageError naming the flags."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "onnxruntime" and onnx_path is None:
        raise UsageError("--backend onnxruntime needs --onnx FILE (write one with --export_onnx FILE)")
    if backend != "onnxruntime" and onnx_path is not None:
        raise UsageError("--onnx needs --backend onnxruntime")
    check_device(device)
    if (backend == "onnxruntime" or int8) and str(device).split(":")[0] != "cpu":
        what = "--int8" if int8 else "--backend onnxruntime"
        raise UsageError(f"{what} runs on the CPU (ONNX Runtime's CPU provider); drop --device {device}")
