"""Dev-set evaluation: span logits at any length configuration, official EM/F1, MACs.

What training's evaluation, ``--do_eval``, the search and the bench scripts call. Two batchings:

* **padded** (``predict_logits``): features in file order, every batch padded to
  ``max_seq_length``; the paper's and the reference's evaluation, used for absolute
  configurations unless sorted batches are asked for.
* **sorted** (``sorted_batch_logits``): features sorted by length, each batch padded only to its
  longest; what ``inference.py`` runs. A relative configuration's token counts depend on each
  batch's longest sequence, so relative configurations are always evaluated this way, and their F1
  is what inference gives at the same batch size.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from core import files
import length_drop
from core import postprocess
from core import windows
from core.errors import UsageError
from evaluate_squad import evaluate_answers
from training.loading import load_features
from training.runtime import Runtime, autocast_context
from training.settings import DataSettings, EvalSettings

logger = logging.getLogger("run_squad")


@torch.no_grad()
def predict_logits(settings: EvalSettings, model, features, device, length_config=None, desc="eval"):
    """Start and end logits [N, L] (float32 numpy) for every feature, at ``length_config``."""
    model.eval()
    dataset = features.eval_dataset()
    n = len(dataset)
    starts = np.empty((n, settings.max_seq_length), dtype=np.float32)
    ends = np.empty_like(starts)
    bs = settings.per_gpu_eval_batch_size
    for i in tqdm(range(0, n, bs), desc=desc, leave=False, disable=n <= bs):
        input_ids, attention_mask, token_type_ids, _ = (t.to(device) for t in dataset[i:i + bs])
        with autocast_context(settings.precision, device):
            out = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        length_config=length_config)
        starts[i:i + bs] = out.start_logits.float().cpu().numpy()
        ends[i:i + bs] = out.end_logits.float().cpu().numpy()
    return starts, ends


# forward(input_ids, attention_mask, token_type_ids) -> (start_logits, end_logits), each [B, w]
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple]
PAST_WIDTH_LOGIT = windows.PAST_WIDTH_LOGIT  # positions past a batch's width: never in the n-best


@dataclass
class SortedLogits:
    starts: np.ndarray        # [N, max_seq_length], PAST_WIDTH_LOGIT past each batch's width
    ends: np.ndarray
    forward_seconds: float    # wall time inside ``forward`` (logits copied back included)


def sorted_batches(attention_mask: torch.Tensor, batch_size: int, pad_to_max_length: bool = False):
    """The inference batching (``windows.batch_plan``): [(feature indices, width)], longest
    features first (a stable sort, so equal lengths keep file order), each batch cut to its
    longest real sequence."""
    plan = windows.batch_plan(attention_mask.sum(1).numpy(), attention_mask.shape[1], batch_size,
                              pad_to_max_length)
    return [(torch.from_numpy(index), width) for index, width in plan]


@torch.no_grad()
def sorted_batch_logits(forward: Forward, features, batch_size: int, pad_to_max_length: bool = False,
                        progress: bool = False, warm_up: bool = False) -> SortedLogits:
    """Start/end logits of every feature, in the features' order, run on ``sorted_batches``. The
    one batching of ``inference.QuestionAnswerer`` and of the evaluation of relative
    configurations, so both give the same answers. ``forward`` runs the model (any backend).
    ``warm_up``: run the first batch once, untimed, before the timed pass (a configuration's
    first forward pays one-time costs: on a CPU the first call took 15x a later one)."""
    n, width = features.input_ids.shape
    starts = np.full((n, width), PAST_WIDTH_LOGIT, dtype=np.float32)
    ends = np.full_like(starts, PAST_WIDTH_LOGIT)
    plan = sorted_batches(features.attention_mask, batch_size, pad_to_max_length)
    if warm_up and plan:
        index, w = plan[0]
        _to_numpy(forward(features.input_ids[index, :w], features.attention_mask[index, :w],
                          features.token_type_ids[index, :w])[0])
    seconds = 0.0
    for index, w in tqdm(plan, desc="batches", disable=not progress or len(plan) < 2):
        args = (features.input_ids[index, :w], features.attention_mask[index, :w],
                features.token_type_ids[index, :w])
        start = time.perf_counter()
        start_logits, end_logits = forward(*args)
        start_logits, end_logits = _to_numpy(start_logits), _to_numpy(end_logits)  # waits for the device
        seconds += time.perf_counter() - start
        rows = index.numpy()
        starts[rows, :w] = start_logits
        ends[rows, :w] = end_logits
    return SortedLogits(starts, ends, seconds)


def _to_numpy(logits) -> np.ndarray:
    if isinstance(logits, torch.Tensor):
        return logits.float().cpu().numpy()
    return np.asarray(logits, dtype=np.float32)


def torch_forward(model, device, length_config=None, precision: str = "fp32") -> Forward:
    """``forward`` for ``sorted_batch_logits`` running our torch model at ``length_config``."""
    device = torch.device(device)

    def forward(input_ids, attention_mask, token_type_ids):
        with autocast_context(precision, device):
            out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                        token_type_ids=token_type_ids.to(device), length_config=length_config)
        return out.start_logits, out.end_logits

    return forward


def real_lengths(features) -> list[int]:
    """Real tokens of every feature (what sorted batches are cut to)."""
    return features.attention_mask.sum(1).tolist()


class DevEvaluator:
    """Dev-set evaluation at any length configuration: predictions, official EM/F1 and MACs.
    Loads the dev features once, so the search can call it configuration after configuration.

    Batching: relative configurations always run on sorted batches of ``per_gpu_eval_batch_size``
    (``sorted_batch_logits``); absolute ones (and full length) on padded batches in file order,
    unless ``sorted_batches`` (the search's ``--search_batching sorted``). On sorted batches
    ``eval_seconds`` is the model's forward time alone, and MACs are averaged over the features at
    their real lengths (each feature as if it were its own batch); on padded batches MACs are those
    of one sequence padded to ``max_seq_length`` (the paper's). ``macs_basis`` says which."""

    def __init__(self, settings: EvalSettings, data: DataSettings, tokenizer, runtime: Runtime,
                 max_questions=None, sorted_batches: bool = False):
        self.settings = settings
        self.device = runtime.device
        self.sorted_batches = sorted_batches
        self.examples, self.features = load_features(data, tokenizer, runtime, False, max_questions)
        if not self.examples:
            raise UsageError(f"--predict_file {data.predict_path}: no questions to evaluate on")
        self.gold = {ex.qas_id: [a["text"] for a in ex.answers] for ex in self.examples}
        self.lengths = real_lengths(self.features)

    def batching_for(self, length_config) -> str:
        return "sorted" if self.sorted_batches or length_drop.is_relative(length_config) else "padded"

    def macs(self, config, length_config=None, batching: str = "padded") -> int:
        """MACs of one feature at ``length_config`` under ``batching`` (see the class)."""
        if batching == "sorted":
            return length_drop.mean_analytic_macs(config, self.lengths, length_config)
        return length_drop.analytic_macs(config, self.settings.max_seq_length, length_config)

    def macs_basis(self, batching: str) -> str:
        if batching == "sorted":
            return f"mean over the {len(self.lengths)} evaluated features at their real lengths"
        return f"one sequence padded to max_seq_length {self.settings.max_seq_length}"

    def logits(self, model, length_config=None):
        """(starts, ends, seconds, batching): the logits of every feature and their time."""
        settings, batching = self.settings, self.batching_for(length_config)
        if batching == "sorted":
            model.eval()
            out = sorted_batch_logits(torch_forward(model, self.device, length_config, settings.precision),
                                      self.features, settings.per_gpu_eval_batch_size, warm_up=True)
            return out.starts, out.ends, out.forward_seconds, batching
        start = time.perf_counter()
        starts, ends = predict_logits(settings, model, self.features, self.device, length_config)
        return starts, ends, time.perf_counter() - start, batching

    def warm_up(self, model) -> None:
        """One untimed pass of the full-length model over every sorted batch, so that the first
        configuration timed does not pay the process's one-time costs per batch shape (on a CPU
        the first pass took several times a later one)."""
        model.eval()
        forward = torch_forward(model, self.device, None, self.settings.precision)
        sorted_batch_logits(forward, self.features, self.settings.per_gpu_eval_batch_size)

    def __call__(self, model, length_config=None, write_predictions=True) -> dict:
        settings = self.settings
        starts, ends, eval_seconds, batching = self.logits(model, length_config)
        predictions, nbest = postprocess.postprocess_predictions(
            self.examples, self.features, starts, ends, settings.n_best_size, settings.max_answer_length)
        scores = evaluate_answers(self.gold, predictions)
        full_macs = self.macs(model.config, None, batching)
        macs = self.macs(model.config, length_config, batching)
        if write_predictions:
            postprocess.write_predictions(predictions, nbest, settings.output_dir)
        return {"exact_match": scores["exact_match"], "f1": scores["f1"],
                "length_config": list(length_config) if length_config is not None else None,
                "macs": macs, "full_macs": full_macs, "macs_ratio": full_macs / macs,
                "macs_basis": self.macs_basis(batching), "batching": batching,
                "eval_batch_size": settings.per_gpu_eval_batch_size,
                "eval_seconds": eval_seconds, "questions": len(self.examples),
                "features": len(self.features)}


def record_eval(output_dir, results: dict, step=None, writer=None) -> None:
    """Append to eval_results.json (the latest result, plus the history), and TensorBoard."""
    path = Path(output_dir) / "eval_results.json"
    history = []
    if path.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            history = json.loads(path.read_text())["history"]
    entry = dict(results, step=step)
    files.atomic_write_json(path, {**entry, "history": history + [entry]})
    if writer is not None and step is not None:
        for k in ("exact_match", "f1", "macs", "macs_ratio", "eval_seconds"):
            writer.add_scalar(f"eval/{k}", results[k], step)
        for tracked in results.get("tracked", ()):
            name = ",".join(f"{v:g}" for v in tracked["length_config"])
            writer.add_scalar(f"eval_tracked/f1 [{name}]", tracked["f1"], step)
    logger.info("eval%s: EM %.2f | F1 %.2f | MACs %.3g (%.2fx fewer; %s) | %d questions | %.1fs (%s batches)",
                f" [step {step}]" if step is not None else "", results["exact_match"], results["f1"],
                results["macs"], results["macs_ratio"], results.get("macs_basis", "padded"),
                results["questions"], results["eval_seconds"], results.get("batching", "padded"))
    for tracked in results.get("tracked", ()):
        logger.info("  tracked %s: F1 %.2f (%.2fx fewer MACs)", tracked["length_config"], tracked["f1"],
                    tracked["macs_ratio"])
