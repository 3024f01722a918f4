"""The int8 form of an exported float32 ONNX file, without torch.

int8 is ONNX Runtime's dynamic quantisation: weights of the encoder's linear layers in int8 (per
output channel), activations quantised per batch at run time. What stays in float32, and why, is in
``Int8Settings``.
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass

from core import files
from serving.onnx.metadata import OnnxMetadata, made_with, quiet, read_metadata, set_metadata


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
        metadata = OnnxMetadata(**{**metadata.__dict__, "precision": "int8", "made_with": made_with(int8=True),
                                   "int8_settings": settings.key()})
        set_metadata(quantized, metadata)
        onnx.save_model(quantized, str(tmp))
    return metadata
