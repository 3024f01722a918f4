"""What inference.py and the ``QuestionAnswerer`` API check before anything loads beyond
``core.checks`` (the model folder, its config and windows): the texts asked about, the backend flags.
No torch and no transformers here, so the command line's errors and its ONNX Runtime answers
(``quick_answer``) come without their imports.
"""
from __future__ import annotations

import unicodedata

from core.checks import check_device
from core.errors import UsageError

BACKENDS = ("torch", "onnxruntime")


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
