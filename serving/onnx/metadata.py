"""ONNX files written by ``onnx_export``, read and quantised without torch.

The file's metadata (``dynamic_tinybert.*``, ``OnnxMetadata``) records the length configuration,
the model's shape, the precision, the hash of the weights it holds (``core.hashing.weights_sha256``)
and the library versions that wrote it, so a runner can check the file against the model folder
it pairs it with. ``metadata_of_session`` reads it from an ONNX Runtime session (no ``onnx``
import, which alone takes over a second).

int8 is ONNX Runtime's dynamic quantisation: weights of the encoder's linear layers in int8 (per
output channel), activations quantised per batch at run time. What stays in float32, and why, is in
``Int8Settings``.
"""
from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import logging
import warnings
from dataclasses import dataclass

from core import files
import length_drop

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("start_logits", "end_logits")
METADATA_PREFIX = "dynamic_tinybert."
# Raised when what export_onnx writes changes, so cached files of older versions are not reused.
# 2: the metadata records the weights' hash and the library versions.
# 3: fused for ONNX Runtime (MultiHeadAttention, SkipLayerNormalization, BiasGelu).
EXPORT_FORMAT_VERSION = 3


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

    def to_props(self) -> dict[str, str]:
        config = None if self.length_config is None else list(self.length_config)
        return {METADATA_PREFIX + "length_config": json.dumps(config),
                METADATA_PREFIX + "weights_sha256": self.weights_sha256,
                METADATA_PREFIX + "made_with": self.made_with,
                METADATA_PREFIX + "num_hidden_layers": str(self.num_hidden_layers),
                METADATA_PREFIX + "hidden_size": str(self.hidden_size),
                METADATA_PREFIX + "vocab_size": str(self.vocab_size),
                METADATA_PREFIX + "max_position_embeddings": str(self.max_position_embeddings),
                METADATA_PREFIX + "precision": self.precision,
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
                   get("weights_sha256"), get("made_with"), get("precision"))


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


def set_metadata(model_proto, metadata: OnnxMetadata) -> None:
    props = metadata.to_props()
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
# int8
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Int8Settings:
    """ONNX Runtime dynamic quantisation of an exported model.

    Quantised: the weights of the six linear layers of every encoder layer (Q, K, V, attention
    output, feed-forward in and out) as int8, one scale per output channel; activations as uint8,
    one scale per batch at run time (MatMulInteger, fused by ONNX Runtime into
    DynamicQuantizeMatMul). Measured on a fine-tuned all-MiniLM-L6-v2, first 1,000 SQuAD dev
    questions, at full length / at [1.0, 1.0, 0.8, 0.6, 0.5, 0.4] (README, "ONNX Runtime and
    int8"): F1 -0.5 / -0.4 (95% interval +-1.3 / +-1.5), mean logit error 0.07 / 0.16 of the
    logits' spread. What was measured against that:

    * one weight scale per tensor (ONNX Runtime's default): -4.4 / -4.6 F1, error 0.16 / 0.30,
      same speed; so per channel;
    * the attention matmuls (scores, context, significance) stay float32: both operands are
      activations; int8 (``MatMulConstBOnly`` off) raised the error to 0.11 / 0.18 at the same
      speed;
    * the embedding tables (Gather) stay float32: int8 gained no speed (a look-up), only a
      smaller file (59 -> 23 MB for MiniLM), with slightly more error (0.070 / 0.162);
    * the QA head (``qa_outputs``, hidden -> 2) stays float32: a few thousand MACs per token,
      nothing to gain (int8 changed neither error nor F1 measurably), and it writes the logits;
    * the feed-forward output layer (after GELU, the usual suspect) is quantised: float32 there
      lowered the error (0.04 / 0.12) but cost 20-25% of the speed and no F1 measurably.
    """

    per_channel: bool = True          # one weight scale per output channel (False: per tensor)
    reduce_range: bool = False        # 7-bit weights (for CPUs without VNNI, where u8 x s8 can saturate)
    keep_fp32_modules: tuple[str, ...] = ("model.qa_outputs",)   # module path patterns (SpanLogits' names)

    def key(self) -> str:
        return json.dumps([self.per_channel, self.reduce_range, list(self.keep_fp32_modules)])


def _module_path(node) -> list[str]:
    """The module names of a node from the exporter's ``namespace`` metadata
    (``": SpanLogits/model: BertFor.../model.qa_outputs: Linear"`` -> ``["", "model", "model.qa_outputs"]``)."""
    for prop in node.metadata_props:
        if prop.key == "namespace":
            return [part.split(":")[0].strip() for part in prop.value.split("/")]
    return []


def nodes_of_modules(model_proto, patterns) -> list[str]:
    """Names of the nodes inside any module whose path matches one of ``patterns`` (fnmatch:
    ``model.qa_outputs``, ``*.intermediate.dense``, ``model.bert.encoder.layer.5.*``)."""
    return [node.name for node in model_proto.graph.node
            if any(fnmatch.fnmatchcase(name, pattern) for name in _module_path(node) for pattern in patterns)]


def quantize_int8(source, destination, settings: Int8Settings = Int8Settings()) -> OnnxMetadata:
    """Write the int8 form of the float32 ONNX file ``source`` (from ``export_onnx``) to
    ``destination``. Returns its metadata."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load(str(source))
    metadata = read_metadata(proto)
    if metadata.precision != "fp32":
        raise ValueError(f"{source}: already {metadata.precision}; quantise the float32 export")
    excluded = nodes_of_modules(proto, settings.keep_fp32_modules)
    missing = [m for m in settings.keep_fp32_modules if not nodes_of_modules(proto, (m,))]
    if missing:  # the exporter's node metadata changed: say so rather than quantise them silently
        raise ValueError(f"{source}: no graph nodes found for the float32 modules {missing}")
    with files.atomic_path(destination, suffix=".onnx") as tmp, quiet():
        quantize_dynamic(proto, str(tmp), op_types_to_quantize=["MatMul"], per_channel=settings.per_channel,
                         reduce_range=settings.reduce_range, weight_type=QuantType.QInt8,
                         nodes_to_exclude=excluded, extra_options={"MatMulConstBOnly": True})
        quantized = onnx.load(str(tmp))
        metadata = OnnxMetadata(**{**metadata.__dict__, "precision": "int8", "made_with": made_with(int8=True)})
        set_metadata(quantized, metadata)
        onnx.save_model(quantized, str(tmp))
    return metadata


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
