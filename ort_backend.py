"""Span logits from an exported ONNX file, run with ONNX Runtime on the CPU.

``OrtLogits`` is a logits provider for ``inference.QuestionAnswerer``: called with one batch
(padded to its longest feature), it returns the start and end logits as numpy arrays. The file
carries its length configuration (``onnx_export.OnnxMetadata``); checks here compare it with the
model folder the tokenizer comes from.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from errors import UsageError
from onnx_export import INPUT_NAMES, OUTPUT_NAMES, OnnxMetadata, read_metadata
from settings import first_line


def load_metadata(path, flag: str = "--onnx") -> OnnxMetadata:
    """The file's metadata, or a UsageError naming the file (missing, not ONNX, not ours)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and friends: any unreadable file
        raise UsageError(f"{flag} {path}: not an ONNX file ({first_line(err)})") from None
    try:
        return read_metadata(proto)
    except (KeyError, ValueError, TypeError):
        raise UsageError(f"{flag} {path}: not written by inference.py --export_onnx "
                         f"(no dynamic_tinybert metadata)") from None


def check_matches_model(metadata: OnnxMetadata, model_config: dict, path, flag: str = "--onnx") -> None:
    """UsageError when the file was exported from a model of another shape than ``model_config``
    (the ``config.json`` of the folder that gives the tokenizer and settings)."""
    for field in ("num_hidden_layers", "hidden_size", "vocab_size"):
        ours, theirs = getattr(metadata, field), model_config.get(field)
        if ours != theirs:
            raise UsageError(f"{flag} {path}: exported from a model with {field} {ours}, but --model "
                             f"has {theirs}; export this model with --export_onnx")


class OrtLogits:
    """An ONNX Runtime session over an exported file; ``provider(input_ids, attention_mask,
    token_type_ids)`` -> ``(start_logits, end_logits)`` float32 numpy arrays ``[B, W]``."""

    def __init__(self, path, threads: int | None = None, flag: str = "--onnx"):
        import onnxruntime as ort

        self.path = Path(path)
        self.metadata = load_metadata(self.path, flag)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one graph branch at a time; threads go to the kernels
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's Fail/InvalidGraph/InvalidProtobuf
            raise UsageError(f"{flag} {self.path}: ONNX Runtime cannot load it ({first_line(err)})") from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != list(INPUT_NAMES) or outputs != list(OUTPUT_NAMES):
            raise UsageError(f"{flag} {self.path}: expected inputs {list(INPUT_NAMES)} and outputs "
                             f"{list(OUTPUT_NAMES)}, got {inputs} and {outputs}")

    @property
    def length_config(self):
        return self.metadata.length_config

    def __call__(self, input_ids, attention_mask, token_type_ids) -> tuple[np.ndarray, np.ndarray]:
        feed = {name: np.ascontiguousarray(_numpy(value), dtype=np.int64)
                for name, value in zip(INPUT_NAMES, (input_ids, attention_mask, token_type_ids))}
        start, end = self.session.run(list(OUTPUT_NAMES), feed)
        return start, end


def _numpy(value):
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)
