"""Span logits from an exported ONNX file, run with ONNX Runtime on the CPU.

``OrtLogits`` is a logits provider for ``inference.QuestionAnswerer``: called with one batch
(padded to its longest feature), it returns the start and end logits as numpy arrays. The file
carries its length configuration (``onnx_export.OnnxMetadata``); checks here compare it with the
model folder the tokenizer comes from. ``onnx_provider`` sets one up from inference.py's flags
(a given file, or the folder's cached export; int8 quantised into the cache when asked); every
file is checked against the folder: the model's shape and the hash of its weights.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core import files
from core.batching import to_numpy
from core.checks import describe_selection, token_selection
import length_drop
from serving.onnx import cache as onnx_cache
from serving.onnx import metadata as onnx_metadata
from core.errors import UsageError
from serving.onnx.int8 import Int8Settings
from serving.onnx.metadata import (INPUT_NAMES, OUTPUT_NAMES, OldFormatError, OnnxMetadata, metadata_of_session,
                         read_metadata)
from core.errors import first_line


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
    return checked_metadata(lambda: read_metadata(proto), path, flag)


def checked_metadata(read, path, flag: str) -> OnnxMetadata:
    """``read()``'s metadata, or a UsageError for a file of an older format or not ours, or whose
    graph is not the one the metadata was written for (``onnx_metadata.check_graph_of``: the
    weights the metadata names are then not the graph's)."""
    try:
        metadata = read()
    except OldFormatError as err:
        raise UsageError(f"{flag} {path}: {err}; export it again with --export_onnx") from None
    except (KeyError, ValueError, TypeError):
        raise UsageError(f"{flag} {path}: not written by inference.py --export_onnx "
                         f"(no dynamic_tinybert metadata)") from None
    try:
        onnx_metadata.check_graph_of(metadata, path)
    except ValueError as err:
        raise UsageError(f"{flag} {path}: {err}") from None
    return metadata


def check_matches_model(metadata: OnnxMetadata, model_config: dict, path, flag: str = "--onnx",
                        weights_sha256: str | None = None) -> None:
    """UsageError when the file was exported from another model than the folder that gives the
    tokenizer and settings: another shape or token selection than its ``config.json``, or (when
    ``weights_sha256`` is given) other weights of the same shape."""
    for field in ("num_hidden_layers", "hidden_size", "vocab_size", "max_position_embeddings"):
        ours, theirs = getattr(metadata, field), model_config.get(field)
        if ours != theirs:
            raise UsageError(f"{flag} {path}: exported from a model with {field} {ours}, but --model "
                             f"has {theirs}; export this model with --export_onnx")
    ours, theirs = metadata.selection, token_selection(model_config)
    if ours != theirs:
        raise UsageError(f"{flag} {path}: exported with {describe_selection(ours)}, but --model's config.json "
                         f"asks for {describe_selection(theirs)}; export this model with --export_onnx")
    if weights_sha256 is not None and metadata.weights_sha256 != weights_sha256:
        raise UsageError(f"{flag} {path}: exported from other weights than --model's (its weights_sha256 "
                         f"differs); export this model with --export_onnx")


def folder_weights_sha256(folder) -> str:
    """``core.hashing.weights_sha256`` of the folder's model (what an export records)."""
    from core.hashing import weights_sha256
    from core.models import load_model_checked

    return weights_sha256(load_model_checked(str(folder), "--model"))


class OrtLogits:
    """An ONNX Runtime session over an exported file; ``provider(input_ids, attention_mask,
    token_type_ids)`` -> ``(start_logits, end_logits)`` float32 numpy arrays ``[B, W]``."""

    def __init__(self, path, threads: int | None = None, flag: str = "--onnx"):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"{flag} {self.path}: no such file")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one graph branch at a time; threads go to the kernels
        options.log_severity_level = 4  # a file it cannot load is said once, below, not also in ONNX Runtime's log
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's Fail/InvalidGraph/InvalidProtobuf
            load_metadata(self.path, flag)  # not ONNX, or not ours: says which
            raise UsageError(f"{flag} {self.path}: ONNX Runtime cannot load it ({first_line(err)})") from None
        # from the session, not onnx.load: importing onnx alone takes over a second
        self.metadata = checked_metadata(lambda: metadata_of_session(self.session), self.path, flag)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != list(INPUT_NAMES) or outputs != list(OUTPUT_NAMES):
            raise UsageError(f"{flag} {self.path}: expected inputs {list(INPUT_NAMES)} and outputs "
                             f"{list(OUTPUT_NAMES)}, got {inputs} and {outputs}")

    @property
    def length_config(self):
        return self.metadata.length_config

    def __call__(self, input_ids, attention_mask, token_type_ids) -> tuple[np.ndarray, np.ndarray]:
        feed = {name: np.ascontiguousarray(to_numpy(value, np.int64))
                for name, value in zip(INPUT_NAMES, (input_ids, attention_mask, token_type_ids))}
        start, end = self.session.run(list(OUTPUT_NAMES), feed)
        return start, end


# --------------------------------------------------------------------------------------------
# Setting a backend up from the flags
# --------------------------------------------------------------------------------------------

def check_onnx_padding(length_config, pad_to_max_length: bool) -> None:
    """An exported graph resolves keep fractions against the batch's width (a shape), which is the
    longest real sequence only when batches are padded to their longest."""
    if pad_to_max_length and length_drop.is_relative(length_config):
        raise UsageError("--pad_to_max_length: an ONNX model with a relative length configuration needs "
                         "batches padded to their longest (drop --pad_to_max_length)")


def onnx_provider(folder, config: dict, length_config, onnx_path, int8: bool,
                  int8_settings: Int8Settings = Int8Settings(), threads=None, cache_dir=None,
                  weights: str | None = None, calibration=None):
    """An ``OrtLogits`` over ``onnx_path`` (checked against the folder's config and, when given,
    ``length_config``), or over the folder's cached export when ``onnx_path`` is None; with
    ``int8`` a float32 file is quantised into the cache first. Either file must hold the folder's
    weights (``weights``: their ``folder_weights_sha256``, computed when not given). Static int8
    settings come with their ``calibration`` features (``serving.onnx.calibration``)."""
    cache = cache_dir or onnx_cache.default_cache_dir()
    weights = weights or folder_weights_sha256(folder)
    if onnx_path is None:
        path = files.writing(cache, "the ONNX cache", lambda: onnx_cache.exported_file(
            folder, length_config, int8, int8_settings, cache, calibration))
        provider = OrtLogits(path, threads, flag="the ONNX cache file")
        check_matches_model(provider.metadata, config, path, "the ONNX cache file", weights)
        return provider
    provider = None if int8 else OrtLogits(onnx_path, threads)  # int8: quantised (by onnx) first
    metadata = load_metadata(onnx_path) if int8 else provider.metadata
    check_matches_model(metadata, config, onnx_path, weights_sha256=weights)
    if length_config is not None:
        try:
            onnx_metadata.check_length_config_of(metadata, length_config)
        except ValueError as err:
            raise UsageError(f"--onnx {onnx_path}: {err}") from None
    if int8 and metadata.precision == "fp32":
        onnx_path = files.writing(cache, "the ONNX cache", lambda: onnx_cache.int8_file(
            onnx_path, int8_settings, cache, calibration))
    elif int8 and int8_settings.method == "static" and metadata.int8_settings != int8_settings.key():
        raise UsageError(f"--onnx {onnx_path} is already int8 (settings {metadata.int8_settings}); static int8 "
                         "(--int8_calibration) quantises a float32 export: give that one")
    return provider or OrtLogits(onnx_path, threads)
