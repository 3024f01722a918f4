"""ONNX files written by ``serving.onnx.export``: their metadata, read and written without torch.

The file's metadata (``dynamic_tinybert.*``, ``OnnxMetadata``) records the length configuration,
the model's shape, its token selection (``core.checks.token_selection``), the precision, the hash of the weights it holds (``core.hashing.weights_sha256``)
and the library versions that wrote it, so a runner can check the file against the model folder
it pairs it with. ``metadata_of_session`` reads it from an ONNX Runtime session (no ``onnx``
import, which alone takes over a second).

Their int8 form is ``serving.onnx.int8``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import mmap
import warnings
from dataclasses import dataclass, replace

from core import files
import length_drop

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("start_logits", "end_logits")
METADATA_PREFIX = "dynamic_tinybert."
# Raised when what export_onnx writes changes, so cached files of older versions are not reused.
# 2: the metadata records the weights' hash and the library versions.
# 3: fused for ONNX Runtime (MultiHeadAttention, SkipLayerNormalization, BiasGelu).
# 4: the metadata records the graph's sha256 and, for int8, the quantisation settings.
# 5: the metadata records the token selection (drop criterion, selecting before attention; and
#    later, what the scorers read, absent meaning the layer's input as before).
EXPORT_FORMAT_VERSION = 5


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported file was made from; stored in the ONNX file's metadata_props."""

    length_config: tuple | None   # as given: token counts or keep fractions; None: full length
    num_hidden_layers: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int
    weights_sha256: str           # core.hashing.weights_sha256 of the exported model
    made_with: str                # JSON {library: version} of what wrote the file
    precision: str = "fp32"       # "fp32" or "int8"
    int8_settings: str | None = None  # int8: ``Int8Settings.key()`` of its quantisation
    graph_sha256: str | None = None   # sha256 of the serialized graph (set by ``set_metadata``)
    drop_criterion: str = "attention"  # core.checks.token_selection of the exported model
    select_before_attention: bool = False
    token_scorer_input: str = "layer_input"  # absent from files written before the option: their scorers' input

    @property
    def selection(self) -> dict:
        selection = {"drop_criterion": self.drop_criterion, "select_before_attention": self.select_before_attention}
        if self.token_scorer_input != "layer_input":
            selection["token_scorer_input"] = self.token_scorer_input
        return selection

    def to_props(self) -> dict[str, str]:
        config = None if self.length_config is None else list(self.length_config)
        optional = {name: getattr(self, name) for name in ("int8_settings", "graph_sha256")
                    if getattr(self, name) is not None}
        return {**{METADATA_PREFIX + name: value for name, value in optional.items()},
                METADATA_PREFIX + "length_config": json.dumps(config),
                METADATA_PREFIX + "weights_sha256": self.weights_sha256,
                METADATA_PREFIX + "made_with": self.made_with,
                METADATA_PREFIX + "num_hidden_layers": str(self.num_hidden_layers),
                METADATA_PREFIX + "hidden_size": str(self.hidden_size),
                METADATA_PREFIX + "vocab_size": str(self.vocab_size),
                METADATA_PREFIX + "max_position_embeddings": str(self.max_position_embeddings),
                METADATA_PREFIX + "precision": self.precision,
                METADATA_PREFIX + "drop_criterion": self.drop_criterion,
                METADATA_PREFIX + "select_before_attention": json.dumps(self.select_before_attention),
                METADATA_PREFIX + "token_scorer_input": self.token_scorer_input,
                METADATA_PREFIX + "format_version": str(EXPORT_FORMAT_VERSION)}

    @classmethod
    def from_props(cls, props: dict[str, str]) -> "OnnxMetadata":
        """Raises KeyError or ValueError when the properties are missing or malformed, and
        ``OldFormatError`` for a file of an earlier format."""
        def get(name):
            return props[METADATA_PREFIX + name]
        version = int(get("format_version"))
        if version != EXPORT_FORMAT_VERSION:
            raise OldFormatError(version)
        config = json.loads(get("length_config"))
        return cls(None if config is None else tuple(config), int(get("num_hidden_layers")),
                   int(get("hidden_size")), int(get("vocab_size")), int(get("max_position_embeddings")),
                   get("weights_sha256"), get("made_with"), get("precision"),
                   props.get(METADATA_PREFIX + "int8_settings"), get("graph_sha256"), get("drop_criterion"),
                   json.loads(get("select_before_attention")) is True,
                   props.get(METADATA_PREFIX + "token_scorer_input", "layer_input"))


class OldFormatError(ValueError):
    """An ONNX file written by another version of the exporter (its metadata differs)."""

    def __init__(self, version: int):
        super().__init__(f"written in export format {version}, this code reads format {EXPORT_FORMAT_VERSION}")
        self.version = version


def made_with(int8: bool = False) -> str:
    """The versions of what writes a file (ONNX Runtime's only for int8, which it quantises)."""
    import onnx
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__}
    if int8:
        import onnxruntime
        versions["onnxruntime"] = onnxruntime.__version__
    return json.dumps(versions, sort_keys=True)


def read_metadata(model_proto) -> OnnxMetadata:
    return OnnxMetadata.from_props({p.key: p.value for p in model_proto.metadata_props})


def metadata_of_session(session) -> OnnxMetadata:
    """``read_metadata`` of the file an ``onnxruntime.InferenceSession`` runs."""
    return OnnxMetadata.from_props(dict(session.get_modelmeta().custom_metadata_map))


def graph_sha256(model_proto) -> str:
    """sha256 of the serialized graph (its nodes, initializers and constants: the weights as the
    file holds them); ``file_parts`` computes the same from a file's bytes."""
    return hashlib.sha256(model_proto.graph.SerializeToString()).hexdigest()


def set_metadata(model_proto, metadata: OnnxMetadata) -> None:
    """Store ``metadata`` in the file's properties, with the sha256 of the graph as it is now (set
    it last, after any change to the graph)."""
    props = replace(metadata, graph_sha256=graph_sha256(model_proto)).to_props()
    kept = [p for p in model_proto.metadata_props if p.key not in props]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(kept)
    for key, value in props.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value


def save(model_proto, path) -> None:
    """Write one self-contained file (weights inside: these models are far below protobuf's 2 GiB)."""
    import onnx

    with files.atomic_path(path, suffix=".onnx") as tmp:
        onnx.save_model(model_proto, str(tmp))


@contextlib.contextmanager
def quiet():
    """The exporter prints its progress on stdout and logs missing torchvision ops, the quantiser
    advises pre-processing on the root logger; keep the command line's output to its own lines
    (errors still raise)."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


# --------------------------------------------------------------------------------------------
# A file's properties and graph hash from its bytes (no onnx import, one pass over the file)
# --------------------------------------------------------------------------------------------

_MODEL_GRAPH, _MODEL_METADATA_PROPS = 7, 14  # ModelProto's field numbers (onnx.proto)


def _varint(data, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _fields(data, begin: int, end: int):
    """(field number, begin, end) of each length-delimited field of the message in ``data[begin:end]``."""
    at = begin
    while at < end:
        tag, at = _varint(data, at)
        kind = tag & 7
        if kind == 0:
            _, at = _varint(data, at)
        elif kind in (1, 5):
            at += 8 if kind == 1 else 4
        elif kind == 2:
            length, at = _varint(data, at)
            if at + length > end:
                raise ValueError("truncated")
            yield tag >> 3, at, at + length
            at += length
        else:
            raise ValueError(f"wire type {kind}")
    if at != end:
        raise ValueError("truncated")


def file_parts(path) -> tuple[dict[str, str], str | None]:
    """An ONNX file's metadata properties and the sha256 of its graph's bytes (None when the file
    holds no graph, or more than one to be merged), read from its protobuf encoding. Raises
    ValueError (or OSError) for a file that is not one."""
    with open(path, "rb") as handle:
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            view = memoryview(data)
            try:
                props, graphs = {}, []
                for field, begin, end in _fields(view, 0, len(view)):
                    if field == _MODEL_GRAPH:
                        graphs.append(hashlib.sha256(view[begin:end]).hexdigest())
                    elif field == _MODEL_METADATA_PROPS:
                        entry = {f: bytes(view[b:e]).decode("utf-8") for f, b, e in _fields(view, begin, end)}
                        props[entry.get(1, "")] = entry.get(2, "")
            except IndexError:
                raise ValueError("truncated") from None
            finally:
                view.release()
    return props, graphs[0] if len(graphs) == 1 else None


def check_graph_of(metadata: OnnxMetadata, path) -> None:
    """Raise ValueError when the graph in the file ``path`` is not the one its metadata was
    written for (weights or nodes edited after export, the metadata kept)."""
    try:
        _, digest = file_parts(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read its graph ({err})") from None
    if digest is None or digest != metadata.graph_sha256:
        raise ValueError("its graph was edited after export (the graph's sha256 is not the one its metadata "
                         "records); export it again with --export_onnx")


def check_length_config_of(metadata: OnnxMetadata, length_config) -> None:
    """Raise ValueError when ``length_config`` (validated, or None) is not the file's."""
    wanted = None if length_config is None else tuple(length_config)
    stored = metadata.length_config
    # 1 == 1.0 in Python: the space (counts or fractions) must match too
    if wanted != stored or length_drop.is_relative(wanted) != length_drop.is_relative(stored):
        raise ValueError(f"exported at length configuration {_shown(stored)}, not {_shown(wanted)}; "
                         f"export again with --length_config")


def _shown(config) -> str:
    return "full length" if config is None else json.dumps(list(config))
