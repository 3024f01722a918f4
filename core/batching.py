"""The one batching loop: every model's windows run batch by batch, the logits put back in order.

``batch_plan`` says which windows go together and how wide each batch is: longest first (or in
file order) and cut to the batch's longest real sequence (or padded to the full window).
``plan_logits`` runs a plan through any ``forward`` (our torch model, transformers' model, an ONNX
Runtime session) and returns start/end logits in the windows' own order; ``sorted_batch_logits`` is
the inference batching that ``inference.py``, the search and the bench scripts share, so they give
the same answers. No torch here: the torch-free quick path runs the same loop.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

PAST_WIDTH_LOGIT = -np.inf  # positions past a batch's width at inference: never in the n-best (the losses use a finite one)

# forward(input_ids, attention_mask, token_type_ids) -> (start_logits, end_logits), each [B, width]
Forward = Callable[..., tuple]


def to_numpy(values, dtype=np.float32) -> np.ndarray:
    """A torch tensor (on any device, any float type) or an array-like, as a numpy array."""
    if hasattr(values, "detach"):  # a torch tensor (torch itself is not imported here)
        values = values.detach().cpu()
        values = values.float() if values.is_floating_point() else values
        values = values.numpy()
    return np.asarray(values, dtype=dtype)


def real_lengths(attention_mask) -> np.ndarray:
    """Real tokens of every window (what sorted batches are cut to)."""
    return to_numpy(attention_mask, np.int64).sum(1)


def batch_plan(lengths, full_width: int, batch_size: int, pad_to_max_length: bool = False,
               sort: bool = True) -> list[tuple[np.ndarray, int]]:
    """[(window indices, width)]: longest windows first (a stable sort, so equal lengths keep
    their order; ``sort=False``: file order), each batch cut to its longest real sequence (or
    ``full_width`` with ``pad_to_max_length``)."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable") if sort else np.arange(lengths.size)
    plan = []
    for i in range(0, lengths.size, batch_size):
        index = order[i:i + batch_size]
        plan.append((index, full_width if pad_to_max_length else int(lengths[index].max())))
    return plan


def batch_inputs(inputs: Sequence, index: np.ndarray, width: int) -> tuple:
    """The rows ``index`` of each input (torch tensors or numpy arrays), cut to ``width``."""
    return tuple(values[index, :width] for values in inputs)


@dataclass
class BatchLogits:
    starts: np.ndarray        # [N, full width], float32; PAST_WIDTH_LOGIT past each batch's width
    ends: np.ndarray
    forward_seconds: float    # wall time inside ``forward`` (logits copied back included)


def plan_logits(forward: Forward, inputs: Sequence, plan, progress: bool = False,
                warm_up: bool = False) -> BatchLogits:
    """Start/end logits of every window, in the windows' order, run batch by batch as ``plan``
    says. ``inputs``: (input_ids, attention_mask, token_type_ids), each [N, full width].
    ``warm_up``: run the first batch once, untimed, before the timed pass (a configuration's first
    forward pays one-time costs: on a CPU the first call took 15x a later one)."""
    n, width = inputs[0].shape
    starts = np.full((n, width), PAST_WIDTH_LOGIT, dtype=np.float32)
    ends = np.full_like(starts, PAST_WIDTH_LOGIT)
    if warm_up and plan:
        to_numpy(forward(*batch_inputs(inputs, *plan[0]))[0])
    seconds = 0.0
    for index, w in tqdm(plan, desc="batches", leave=False, disable=not progress or len(plan) < 2):
        batch = batch_inputs(inputs, index, w)
        start = time.perf_counter()
        start_logits, end_logits = forward(*batch)
        start_logits, end_logits = to_numpy(start_logits), to_numpy(end_logits)  # waits for the device
        seconds += time.perf_counter() - start
        starts[index, :w], ends[index, :w] = start_logits, end_logits
    return BatchLogits(starts, ends, seconds)


def sorted_batch_logits(forward: Forward, inputs: Sequence, batch_size: int, pad_to_max_length: bool = False,
                        progress: bool = False, warm_up: bool = False) -> BatchLogits:
    """``plan_logits`` on the inference batching: sorted by length, each batch padded only to its
    longest (``pad_to_max_length``: to the full window)."""
    plan = batch_plan(real_lengths(inputs[1]), inputs[0].shape[1], batch_size, pad_to_max_length)
    return plan_logits(forward, inputs, plan, progress, warm_up)
