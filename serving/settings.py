"""What inference.py and the ``QuestionAnswerer`` API check before anything loads beyond
``core.checks`` (the model folder, its config and windows): the texts asked about, the backend flags,
and the one frozen ``ServingSettings`` both build.
No torch and no transformers here, so the command line's errors and its ONNX Runtime answers
(``quick_answer``) come without their imports.
"""
from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from core import machine
from core.checks import check_device, check_threads, check_window_flags, window_settings
from core.errors import UsageError
from serving.menu import check_budget_flags
from serving.onnx.int8 import Int8Settings, calibration_problem

BACKENDS = ("torch", "onnxruntime")
PRECISIONS = ("fp32", "bf16")  # the torch backend's; ONNX Runtime runs its file's own (float32 or int8)


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


def check_precision(precision: str, backend: str, int8: bool) -> None:
    """bfloat16 is the torch backend's (a bfloat16 copy of the weights); an ONNX file runs at its own precision."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)} (--bf16 for bf16), got {precision!r}")
    if precision == "bf16" and (backend == "onnxruntime" or int8):
        what = "--int8" if int8 else "--backend onnxruntime"
        raise UsageError(f"--bf16 is the torch backend's bfloat16; {what} runs the ONNX file's own "
                         "precision (float32, or int8): give one of them")


def check_calibration(settings) -> None:
    """Static int8's flags: only with --int8, a calibration file that exists, a method and count
    Int8Settings takes."""
    default = ServingSettings.__dataclass_fields__
    tuned = [f"--{name}" for name in ("int8_calibration_count", "int8_calibration_method")
             if getattr(settings, name) != default[name].default]
    if settings.int8_calibration is None:
        if tuned:
            raise UsageError(f"{' and '.join(tuned)} need --int8_calibration FILE (static int8)")
        return
    if not settings.int8:
        raise UsageError("--int8_calibration calibrates static int8: it needs --int8")
    if not Path(settings.int8_calibration).is_file():
        raise UsageError(f"--int8_calibration {settings.int8_calibration}: no such file (a SQuAD v1.1 JSON of "
                         "training questions)")
    problem = calibration_problem(settings.int8_calibration_method, settings.int8_calibration_count)
    if problem is not None:
        raise UsageError(problem)


@dataclass(frozen=True)
class ServingSettings:
    """How a ``QuestionAnswerer`` runs, checked once when built (flags that cannot go together, bad
    numbers), before anything is read or loaded; the model folder's own checks (its config, the
    windows against its positions, the menu) come in ``QuestionAnswerer.from_settings``. The
    command line builds one from its flags (``from_args``), the API from keywords: the same checks
    and defaults for both. Windows left None are the model's own (``core.checks.window_settings``)."""

    length_config: object = None       # token counts or keep fractions per layer; a JSON list's text too
    max_seq_length: int | None = None
    doc_stride: int | None = None
    max_query_length: int | None = None
    n_best_size: int = 20
    max_answer_length: int = 30
    batch_size: int = 32
    pad_to_max_length: bool = False
    backend: str = "torch"             # "torch": the folder's weights; "onnxruntime": the file onnx_path
    onnx_path: str | None = None
    int8: bool = False                 # ONNX Runtime int8 (of onnx_path, or of the folder's export): dynamic ...
    int8_calibration: str | None = None  # ... or static, calibrated on this SQuAD file's (training) questions
    int8_calibration_count: int = 256    # static: features calibrated on
    int8_calibration_method: str = "minmax"  # static: serving.onnx.int8.CALIBRATION_METHODS
    int8_settings: Int8Settings = Int8Settings()  # what stays float32, per-channel weights, ...
    precision: str = "fp32"            # the torch backend's: "fp32", or "bf16" (bfloat16 weights; token scorers fp32)
    device: str = "cpu"
    threads: int | None = None         # torch's and ONNX Runtime's (None: torch's choice)
    cache_dir: str | None = None       # where exports and int8 copies are kept (None: the default cache)
    speedup: float | None = None       # choose the configuration from the model's length menu ...
    max_f1_drop: float | None = None   # ... by one budget
    menu: str | None = None            # the menu file (None: <model>/length_configs.json)

    def __post_init__(self):
        check_threads(self.threads)
        check_backend(self.backend, self.onnx_path, self.int8, self.device)
        check_precision(self.precision, self.backend, self.int8)
        check_calibration(self)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UsageError(f"--batch_size must be an integer of at least 1, got {self.batch_size!r}")
        check_budget_flags(self.length_config, self.speedup, self.max_f1_drop, self.menu)

    @classmethod
    def from_args(cls, args) -> "ServingSettings":
        """From ``inference.py``'s parsed flags."""
        return cls(length_config=args.length_config, max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
                   max_query_length=args.max_query_length, n_best_size=args.n_best_size,
                   max_answer_length=args.max_answer_length, batch_size=args.batch_size,
                   pad_to_max_length=args.pad_to_max_length, backend=args.backend, onnx_path=args.onnx,
                   int8=args.int8, int8_calibration=args.int8_calibration,
                   int8_calibration_count=args.int8_calibration_count,
                   int8_calibration_method=args.int8_calibration_method,
                   precision="bf16" if args.bf16 else "fp32", device=args.device,
                   threads=args.threads, speedup=args.speedup,
                   max_f1_drop=args.max_f1_drop, menu=args.menu)

    def windows(self, folder, max_position_embeddings: int | None = None) -> dict:
        """max_seq_length, doc_stride and max_query_length, the model's own where left None, checked
        with the n-best settings against the model's positions."""
        window = window_settings(folder, self.max_seq_length, self.doc_stride, self.max_query_length)
        check_window_flags(*window.values(), self.n_best_size, self.max_answer_length, max_position_embeddings)
        return window

    def quantization(self) -> Int8Settings:
        """The int8 settings: static with ``int8_calibration`` (its ``calibration_sha256`` is set
        once the features are built, ``serving.onnx.calibration``), else dynamic."""
        if self.int8_calibration is None:
            return self.int8_settings
        base = Int8Settings.static() if self.int8_settings == Int8Settings() else self.int8_settings
        return dataclasses.replace(base, method="static", calibration_method=self.int8_calibration_method,
                                   calibration_count=self.int8_calibration_count)

    def precision_warning(self) -> str | None:
        """One line where bfloat16 will run without the CPU's bfloat16 instructions (slower than
        float32: docs/serving.md, 'bfloat16'); None otherwise."""
        if self.precision != "bf16" or str(self.device).split(":")[0] != "cpu":
            return None
        return machine.bf16_problem()

    @property
    def exports_onnx(self) -> bool:
        """Whether the answers come from ONNX Runtime (a given file, or the folder's int8 copy)."""
        return self.backend == "onnxruntime" or self.int8
