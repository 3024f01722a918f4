"""A torch model as a ``forward`` for ``core.batching``: the model at a length configuration and
a precision, its logits back as float32 numpy. One adapter for the evaluation, the serving API and
the bench scripts (our ``modeling_bert`` model, or transformers' own for the baselines).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from core.batching import to_numpy

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(precision: str, device: torch.device):
    """Autocast for "bf16" / "fp16"; nothing for "fp32"."""
    if precision in AUTOCAST_DTYPES:
        return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()


class TorchLogits:
    """``model`` run at ``length_config`` (None: full length; transformers' models take none) on
    ``device`` in ``precision``: (input_ids, attention_mask, token_type_ids) -> float32 numpy
    start and end logits."""

    def __init__(self, model, length_config=None, device="cpu", precision: str = "fp32"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.length_config = length_config
        self.precision = precision

    @torch.no_grad()
    def __call__(self, input_ids, attention_mask, token_type_ids) -> tuple[np.ndarray, np.ndarray]:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        inputs = {k: torch.as_tensor(v).to(self.device) for k, v in inputs.items()}
        if self.length_config is not None:
            inputs["length_config"] = self.length_config
        with autocast_context(self.precision, self.device):
            out = self.model(**inputs)
        return to_numpy(out.start_logits), to_numpy(out.end_logits)
