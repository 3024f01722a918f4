"""The int8 form of an exported float32 ONNX file, without torch.

Two kinds, both ONNX Runtime's: **dynamic** (``--int8``): weights of the encoder's linear layers in
int8 (per output channel), activations quantised per batch at run time; **static** (``--int8
--int8_calibration FILE``): the activations' scales fixed beforehand from a few hundred training
features run through the float32 graph (QDQ format: QuantizeLinear/DequantizeLinear pairs around
each quantised MatMul, which ONNX Runtime fuses into integer kernels), so no per-batch range
computation is left at run time. What stays in float32, and why, is in ``Int8Settings``; the
calibration features come from ``serving.onnx.calibration``.
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass

from core import files
from serving.onnx.metadata import OnnxMetadata, made_with, quiet, read_metadata, set_metadata

INT8_METHODS = ("dynamic", "static")
# ONNX Runtime's calibration methods by our name: the activations' min and max over the calibration
# features; the range that minimises the KL divergence of the histogram (TensorRT's "entropy");
# a percentile of the absolute values (99.999%, ONNX Runtime's default).
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def calibration_problem(method, count) -> str | None:
    """What is wrong with a calibration method and feature count, naming the flag; None if nothing."""
    if method not in CALIBRATION_METHODS:
        return f"--int8_calibration_method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}"
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        return f"--int8_calibration_count must be an integer of at least 1, got {count!r}"
    return None


# Static int8's float32 modules. Measured on the step-1 MiniLM (mean |int8 - fp32| logit over the
# logits' spread, 128 dev features; dynamic: 0.070): every linear layer static 0.214 (min-max),
# 0.206 (percentile), 0.230 (entropy); keeping Q/K/V, the attention output or the feed-forward
# input in float32 changed little (0.214, 0.212, 0.208); keeping the feed-forward output layer
# (after GELU) in float32: 0.068 / 0.064 / 0.069.
STATIC_KEEP_FP32 = ("model.qa_outputs", "model.bert.encoder.layer.*[0-9].output.dense")


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
    method: str = "dynamic"           # "dynamic" (scales per batch at run time) or "static" (calibrated)
    calibration_method: str = "minmax"   # static: a CALIBRATION_METHODS name
    calibration_count: int = 256         # static: training features calibrated on
    calibration_sha256: str | None = None  # static: ``Calibration.sha256`` of those features (set when built)

    def __post_init__(self):
        if self.method not in INT8_METHODS:
            raise ValueError(f"int8 method must be one of {', '.join(INT8_METHODS)}, got {self.method!r}")
        problem = calibration_problem(self.calibration_method, self.calibration_count)
        if problem is not None:
            raise ValueError(problem)

    @classmethod
    def static(cls, **calibration) -> "Int8Settings":
        """Static int8 as measured best (docs/serving.md, "Static int8"): the feed-forward output
        layers in float32 too, whose input (GELU's output) no calibrated range fits."""
        return cls(method="static", keep_fp32_modules=STATIC_KEEP_FP32, **calibration)

    def key(self) -> str:
        """What the file's metadata and the cache record: dynamic files keep the key they always had."""
        common = [self.per_channel, self.reduce_range, list(self.keep_fp32_modules)]
        if self.method == "dynamic":
            return json.dumps(common)
        return json.dumps([*common, "static", self.calibration_method, self.calibration_count,
                           self.calibration_sha256])


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


class CalibrationReader:
    """ONNX Runtime's ``CalibrationDataReader`` over the calibration batches."""

    def __init__(self, batches, input_names):
        self._batches = iter([dict(zip(input_names, batch)) for batch in batches])

    def get_next(self):
        return next(self._batches, None)


def _quantize(proto, path, settings: Int8Settings, excluded: list[str], calibration) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if settings.method == "dynamic":
        quantize_dynamic(proto, str(path), op_types_to_quantize=["MatMul"], per_channel=settings.per_channel,
                         reduce_range=settings.reduce_range, weight_type=QuantType.QInt8,
                         nodes_to_exclude=excluded, extra_options={"MatMulConstBOnly": True})
        return
    # uint8 activations with a zero point (the hidden states after GELU and LayerNorm are not
    # centred), symmetric int8 weights: ONNX Runtime's u8s8 kernels (VNNI, AMX-INT8)
    reader = CalibrationReader(calibration.batches, [i.name for i in proto.graph.input])
    quantize_static(proto, str(path), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                    per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                    calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[settings.calibration_method]),
                    # not CalibMaxIntermediateOutputs: ONNX Runtime 1.32's min-max calibrator clears the
                    # collected batches at that count without reading them (all of them, at a multiple)
                    extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True, "ActivationSymmetric": False})


def quantize_int8(source, destination, settings: Int8Settings = Int8Settings(), calibration=None) -> OnnxMetadata:
    """Write the int8 form of the float32 ONNX file ``source`` (from ``export_onnx``) to
    ``destination``. Static settings need the ``calibration`` (``serving.onnx.calibration``) whose
    sha256 they record. Returns its metadata."""
    import onnx

    if settings.method == "static" and (calibration is None or calibration.sha256 != settings.calibration_sha256):
        raise ValueError("static int8 needs the calibration features its settings name (calibration_sha256 "
                         f"{settings.calibration_sha256}), got " + ("none" if calibration is None else calibration.sha256))
    proto = onnx.load(str(source))
    metadata = read_metadata(proto)
    if metadata.precision != "fp32":
        raise ValueError(f"{source}: already {metadata.precision}; quantise the float32 export")
    excluded = nodes_of_modules(proto, settings.keep_fp32_modules)
    missing = [m for m in settings.keep_fp32_modules if not nodes_of_modules(proto, (m,))]
    if missing:  # the exporter's node metadata changed: say so rather than quantise them silently
        raise ValueError(f"{source}: no graph nodes found for the float32 modules {missing}")
    with files.atomic_path(destination, suffix=".onnx") as tmp, quiet():
        _quantize(proto, tmp, settings, excluded, calibration)
        quantized = onnx.load(str(tmp))
        metadata = OnnxMetadata(**{**metadata.__dict__, "precision": "int8", "made_with": made_with(int8=True),
                                   "int8_settings": settings.key()})
        set_metadata(quantized, metadata)
        onnx.save_model(quantized, str(tmp))
    return metadata
