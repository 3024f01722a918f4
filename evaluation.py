"""Dev-set evaluation: span logits at any length configuration, official EM/F1, MACs.

What training's evaluation, ``--do_eval``, the search and the bench scripts call; the seed of a
user-facing inference API (``predict_logits`` runs a model over features in batches).
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import files
import length_drop
import postprocess
from errors import UsageError
from evaluate_squad import evaluate_answers
from loading import load_features
from runtime import Runtime, autocast_context
from settings import DataSettings, EvalSettings

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


class DevEvaluator:
    """Dev-set evaluation at any length configuration: predictions, official EM/F1 and MACs.
    Loads the dev features once, so the search can call it configuration after configuration."""

    def __init__(self, settings: EvalSettings, data: DataSettings, tokenizer, runtime: Runtime,
                 max_questions=None):
        self.settings = settings
        self.device = runtime.device
        self.examples, self.features = load_features(data, tokenizer, runtime, False, max_questions)
        if not self.examples:
            raise UsageError(f"--predict_file {data.predict_path}: no questions to evaluate on")
        self.gold = {ex.qas_id: [a["text"] for a in ex.answers] for ex in self.examples}

    def __call__(self, model, length_config=None, write_predictions=True) -> dict:
        settings = self.settings
        start = time.perf_counter()
        starts, ends = predict_logits(settings, model, self.features, self.device, length_config)
        eval_seconds = time.perf_counter() - start
        predictions, nbest = postprocess.postprocess_predictions(
            self.examples, self.features, starts, ends, settings.n_best_size, settings.max_answer_length)
        scores = evaluate_answers(self.gold, predictions)
        full_macs = length_drop.analytic_macs(model.config, settings.max_seq_length)
        macs = length_drop.analytic_macs(model.config, settings.max_seq_length, length_config)
        if write_predictions:
            postprocess.write_predictions(predictions, nbest, settings.output_dir)
        return {"exact_match": scores["exact_match"], "f1": scores["f1"],
                "length_config": list(length_config) if length_config is not None else None,
                "macs": macs, "full_macs": full_macs, "macs_ratio": full_macs / macs,
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
    logger.info("eval%s: EM %.2f | F1 %.2f | MACs %.3g (%.2fx fewer) | %d questions | %.1fs",
                f" [step {step}]" if step is not None else "", results["exact_match"], results["f1"],
                results["macs"], results["macs_ratio"], results["questions"], results["eval_seconds"])
