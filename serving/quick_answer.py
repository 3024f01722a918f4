"""One answer from an exported ONNX file with tokenizers, ONNX Runtime and numpy alone.

``inference.py --backend onnxruntime --onnx FILE --question Q --context C`` takes this path: it
imports neither torch nor transformers, which take most of the PyTorch path's start (docs/onnx.md,
"One answer from the command line"). The answer is ``QuestionAnswerer.answer``'s: the same
windows (``windows.encode_windows`` on the folder's ``tokenizer.json``), the same batches
(``batching.sorted_batch_logits``), the same ONNX Runtime session (``ort_backend.OrtLogits``) and the same
n-best rules (``postprocess``).

``answer`` returns None where this path cannot vouch for that, and the caller takes the full
path: no ``tokenizer.json`` or pad token, a tokenizer that does not lower-case (the full path
warns), or weights that are not safetensors files (``model.safetensors``, and the learned
criterion's token scorers) whose hash is the file's ``weights_sha256`` (the full path loads them
and says what differs).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.onnx import backend as ort_backend
from core import postprocess
from core import batching, windows
from core.checks import check_window_flags, read_model_config, weight_files
from core.hashing import safetensors_weights_sha256

def pad_token_id(folder: Path, backend) -> int | None:
    """The id of ``tokenizer_config.json``'s pad token (what transformers pads with), or None."""
    try:
        token = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("pad_token")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(token, dict):  # an AddedToken written out
        token = token.get("content")
    return backend.token_to_id(token) if isinstance(token, str) else None


def load_backend(folder: Path):
    """The folder's ``tokenizer.json`` and its pad id, or None when this path cannot use them."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception:  # the full path says what is wrong with it
        return None
    normalizer = json.loads(backend.to_str()).get("normalizer")
    pad_id = pad_token_id(folder, backend)
    if not windows.normalizer_lowercases(normalizer) or pad_id is None:
        return None
    return backend, pad_id


@dataclass
class Windows:
    """What ``postprocess.postprocess_predictions`` reads of features."""

    example_index: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    def context_offsets(self):
        return self.starts, self.ends


@dataclass
class Question:
    """What ``postprocess.postprocess_predictions`` reads of an example."""

    qas_id: str
    context: str


def answer(folder, onnx_path, question: str, context: str, *, max_seq_length: int, doc_stride: int,
           max_query_length: int, n_best_size: int = 20, max_answer_length: int = 30, batch_size: int = 32,
           threads: int | None = None) -> dict | None:
    """``{"answer", "score", "start", "end"}`` as ``QuestionAnswerer.answer`` gives it for the
    ONNX file ``onnx_path`` paired with the model folder ``folder`` (flags already checked), or
    None when the full path must answer (module docstring)."""
    folder = Path(folder)
    config = read_model_config(folder)
    weights = weight_files(folder, config)
    loaded = load_backend(folder)
    if loaded is None or not all(path.is_file() for path in weights):
        return None
    backend, pad_id = loaded
    provider = ort_backend.OrtLogits(onnx_path, threads)
    ort_backend.check_matches_model(provider.metadata, config, onnx_path)  # the shape; the weights below
    if safetensors_weights_sha256(*weights) != provider.metadata.weights_sha256:
        return None
    check_window_flags(max_seq_length, doc_stride, max_query_length, n_best_size, max_answer_length,
                       provider.metadata.max_position_embeddings)
    features = windows.encode_windows(backend, [question], [context], max_seq_length, doc_stride,
                                      max_query_length, pad_id)
    inputs = tuple(features[name] for name in ("input_ids", "attention_mask", "token_type_ids"))
    out = batching.sorted_batch_logits(provider, inputs, batch_size)
    starts, ends = out.starts, out.ends
    _, nbest = postprocess.postprocess_predictions(
        [Question("0", context)], Windows(features["example_index"], features["starts"], features["ends"]),
        starts, ends, n_best_size, max_answer_length, with_offsets=True)
    return postprocess.best_answer(nbest["0"])
