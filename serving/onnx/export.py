"""ONNX files of a model at one length configuration, and their int8 form.

    export_onnx(model, "model.onnx", length_config=(1.0, 1.0, 0.8, 0.6, 0.5, 0.4))
    quantize_int8("model.onnx", "model-int8.onnx")

The graph holds Drop-and-Restore: each dropping layer selects tokens with ONNX TopK on the
significance (the attention received, or the learned criterion's token scorers, which the graph
holds), ``k = min(count, width)`` computed from the input's shape, so the batch and sequence
axes stay dynamic. An absolute configuration therefore drops nothing in a layer whose count is at
least the tokens it receives (as the PyTorch model does); a relative one resolves its fractions
against the input's width, which is the batch's longest real sequence when batches are padded only
to their longest (as ``inference.py`` pads them). The exporter is torch's dynamo exporter
(``torch.export``); under it the model takes its explicit-softmax attention path (see
``modeling_bert._drop_decision`` and ``select_tokens``).

The file's metadata (``serving.onnx.metadata``) and the int8 form (``serving.onnx.int8``) need no
torch; their names are re-exported here.
"""
from __future__ import annotations

import torch
from torch import nn

import length_drop
# The file format and int8 need no torch; re-exported for callers of serving.onnx.export.
from serving.onnx.int8 import Int8Settings, nodes_of_modules, quantize_int8  # noqa: F401
from serving.onnx.metadata import (  # noqa: F401
    EXPORT_FORMAT_VERSION, INPUT_NAMES, METADATA_PREFIX, OUTPUT_NAMES, OldFormatError, OnnxMetadata,
    check_length_config_of, made_with, quiet, read_metadata, save, set_metadata)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------

class SpanLogits(nn.Module):
    """The exported function: (input_ids, attention_mask, token_type_ids) -> (start, end logits)
    at a fixed length configuration. The submodule is named ``model``, so graph nodes carry
    ``model.qa_outputs`` etc. in their namespace (used to keep the QA head in float32)."""

    def __init__(self, model, length_config):
        super().__init__()
        self.model = model
        self.length_config = None if length_config is None else tuple(length_config)

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         length_config=self.length_config)
        return out.start_logits, out.end_logits


def example_inputs(max_position_embeddings: int, batch: int = 2, width: int = 64):
    """A batch to trace with: the first row real throughout, the second half padding (a shape,
    not a value, decides every branch, so these values only have to be valid)."""
    width = max(2, min(width, max_position_embeddings))
    input_ids = torch.full((batch, width), 7, dtype=torch.long)
    attention_mask = torch.ones(batch, width, dtype=torch.long)
    attention_mask[1:, width // 2:] = 0
    token_type_ids = (torch.arange(width) >= width // 4).long().expand(batch, width) * attention_mask
    return input_ids * attention_mask, attention_mask, token_type_ids.contiguous()


def export_onnx(model, path, length_config=None, fuse: bool = True) -> OnnxMetadata:
    """Write ``model`` (a ``modeling_bert.BertForQuestionAnswering``) at ``length_config``
    (absolute or relative, validated by the model; None: full length) to the ONNX file ``path``,
    float32, with dynamic batch and sequence axes, fused for ONNX Runtime unless ``fuse`` is
    False (``fuse_for_onnxruntime``). Returns the metadata stored in the file."""
    import onnx

    from core.checks import token_selection
    from core.hashing import weights_sha256

    config = model.config
    if length_config is not None:  # the model's own rule: any positive counts, or fractions
        length_config = length_drop.check_length_config(tuple(length_config), config.num_hidden_layers,
                                                        non_increasing=False, name="length_config")
    wrapper = SpanLogits(model, length_config).eval()
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", min=1, max=config.max_position_embeddings)
    axes = {0: batch, 1: sequence}
    first = next(model.parameters())
    was_training, device, dtype = model.training, first.device, first.dtype
    model.eval().to(device="cpu", dtype=torch.float32)
    try:
        metadata = OnnxMetadata(length_config, config.num_hidden_layers, config.hidden_size, config.vocab_size,
                                config.max_position_embeddings, weights_sha256(model), made_with(), "fp32",
                                **token_selection(config))
        with torch.no_grad(), quiet():
            program = torch.onnx.export(
                wrapper, example_inputs(config.max_position_embeddings), dynamo=True,
                input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                dynamic_shapes={name: axes for name in INPUT_NAMES}, verbose=False)
    finally:
        model.to(device=device, dtype=dtype).train(was_training)
    proto = fuse_for_onnxruntime(program.model) if fuse else program.model_proto
    set_metadata(proto, metadata)
    onnx.checker.check_model(proto)
    save(proto, path)
    return metadata


def fuse_for_onnxruntime(model_ir):
    """onnxscript's ONNX Runtime fusions on the exported graph (as ONNX proto): each attention
    becomes one ``com.microsoft.MultiHeadAttention``, residual + LayerNorm a
    ``SkipLayerNormalization``, bias + GELU a ``BiasGelu``. ONNX Runtime's own session optimiser
    matches the older TorchScript exporter's patterns, not the dynamo exporter's attention; without
    these fusions our full-length graph ran slower than transformers' TorchScript export (docs/serving.md).
    Dropping layers keep their explicit attention (TopK needs the scores), so fusions apply where
    the patterns match; the logits are unchanged to float tolerance (tests/test_onnx.py)."""
    import onnx_ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    with quiet():
        fused, _ = optimize_for_ort(model_ir)
    return onnx_ir.serde.serialize_model(fused)
