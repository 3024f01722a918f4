"""A torch model as a ``forward`` for ``core.batching``: the model at a length configuration and
a precision, its logits back as float32 numpy. One adapter for the evaluation, the serving API and
the bench scripts (our ``modeling_bert`` model, or transformers' own for the baselines).

Inference precisions: "fp32"; "bf16", a bfloat16 copy of the weights (the token scorers stay
float32); "bf16-autocast" and "fp16", float32 weights under ``torch.autocast`` (training's
precisions). On a 2-core Xeon with AMX the bfloat16 copy of transformers' model ran 1.31x faster
than autocast at batch 32 (1.55x at batch 1), at the same F1: autocast converts every linear
layer's float32 input (LayerNorm's output) again on each call, and runs LayerNorm and the
residual additions in float32 (docs/serving.md).
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch

from core.batching import to_numpy

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "bf16-autocast": torch.bfloat16}
# The precision whose weights TorchLogits casts; the others of AUTOCAST_DTYPES run under autocast.
WEIGHT_DTYPES = {"bf16": torch.bfloat16}
INFERENCE_PRECISIONS = ("fp32", "bf16", "bf16-autocast", "fp16")


def autocast_context(precision: str, device: torch.device):
    """Autocast for "bf16" / "bf16-autocast" / "fp16" (training: float32 master weights); nothing
    for "fp32"."""
    if precision in AUTOCAST_DTYPES:
        return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()


def cast_for_inference(model, dtype: torch.dtype):
    """A copy of ``model`` for inference with its weights in ``dtype``; the caller's model is left
    as it is (it may be in training). Our token scorers stay float32: their scores pick the kept
    tokens, and rounding would decide near ties (``modeling_bert.TokenScorer``)."""
    cast = copy.deepcopy(model).to(dtype)
    scorers = getattr(getattr(getattr(cast, "bert", None), "encoder", None), "token_scorers", None)
    if scorers is not None:
        scorers.float()
    return cast


class TorchLogits:
    """``model`` run at ``length_config`` (None: full length; transformers' models take none) on
    ``device`` in ``precision`` (``INFERENCE_PRECISIONS``): (input_ids, attention_mask,
    token_type_ids) -> float32 numpy start and end logits."""

    def __init__(self, model, length_config=None, device="cpu", precision: str = "fp32"):
        if precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {precision!r}")
        self.device = torch.device(device)
        model = model.to(self.device).eval()
        self.model = cast_for_inference(model, WEIGHT_DTYPES[precision]) if precision in WEIGHT_DTYPES else model
        self.length_config = length_config
        self.precision = precision
        self.autocast = "fp32" if precision in WEIGHT_DTYPES else precision

    @torch.no_grad()
    def __call__(self, input_ids, attention_mask, token_type_ids) -> tuple[np.ndarray, np.ndarray]:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        inputs = {k: torch.as_tensor(v).to(self.device) for k, v in inputs.items()}
        if self.length_config is not None:
            inputs["length_config"] = self.length_config
        with autocast_context(self.autocast, self.device):
            out = self.model(**inputs)
        return to_numpy(out.start_logits), to_numpy(out.end_logits)
