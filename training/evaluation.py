"""Dev-set evaluation: span logits at any length configuration, official EM/F1, MACs.

What training's evaluation, ``--do_eval``, the search and the bench scripts call. Two batchings:

* **padded** (``predict_logits``): features in file order, every batch padded to
  ``max_seq_length``; the paper's and the reference's evaluation, used for absolute
  configurations unless sorted batches are asked for.
* **sorted** (``core.batching.sorted_batch_logits``): features sorted by length, each batch
  padded only to its longest; what ``inference.py`` runs. A relative configuration's token counts depend on each
  batch's longest sequence, so relative configurations are always evaluated this way, and their F1
  is what inference gives at the same batch size.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path


from core import files
import length_drop
from core import postprocess
from core import batching
from core.errors import UsageError
from evaluate_squad import evaluate_answers, per_question_f1
from training.loading import load_features
from core.forward import TorchLogits
from training.runtime import Runtime
from training.settings import DataSettings, EvalSettings

logger = logging.getLogger("run_squad")


def predict_logits(settings: EvalSettings, model, features, device, length_config=None):
    """Start and end logits [N, L] (float32 numpy) for every feature, at ``length_config``, on
    padded batches in file order (the paper's evaluation)."""
    plan = batching.batch_plan(batching.real_lengths(features.attention_mask), features.input_ids.shape[1],
                               settings.per_gpu_eval_batch_size, pad_to_max_length=True, sort=False)
    forward = TorchLogits(model, length_config, device, settings.precision)
    out = batching.plan_logits(forward, model_inputs(features), plan, progress=True)
    return out.starts, out.ends


def model_inputs(features) -> tuple:
    """The three model inputs of every feature, [N, max_seq_length] each."""
    return features.input_ids, features.attention_mask, features.token_type_ids


class DevEvaluator:
    """Dev-set evaluation at any length configuration: predictions, official EM/F1 and MACs.
    Loads the dev features once, so the search can call it configuration after configuration.

    Batching: relative configurations always run on sorted batches of ``per_gpu_eval_batch_size``
    (``core.batching.sorted_batch_logits``); absolute ones (and full length) on padded batches
    in file order, unless ``sorted_batches`` (the search's ``--search_batching sorted``). On sorted batches
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
        self.lengths = batching.real_lengths(self.features.attention_mask).tolist()

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
        settings, kind = self.settings, self.batching_for(length_config)
        if kind == "sorted":
            out = batching.sorted_batch_logits(TorchLogits(model, length_config, self.device, settings.precision),
                                               model_inputs(self.features), settings.per_gpu_eval_batch_size,
                                               warm_up=True)
            return out.starts, out.ends, out.forward_seconds, kind
        start = time.perf_counter()
        starts, ends = predict_logits(settings, model, self.features, self.device, length_config)
        return starts, ends, time.perf_counter() - start, kind

    def warm_up(self, model) -> None:
        """One untimed pass of the full-length model over every sorted batch, so that the first
        configuration timed does not pay the process's one-time costs per batch shape (on a CPU
        the first pass took several times a later one)."""
        batching.sorted_batch_logits(TorchLogits(model, None, self.device, self.settings.precision),
                                     model_inputs(self.features), self.settings.per_gpu_eval_batch_size)

    def __call__(self, model, length_config=None, write_predictions=True, per_question: bool = False) -> dict:
        """Official EM/F1 (and MACs, seconds) of ``model`` at ``length_config``; ``per_question``:
        also each question's F1 (``f1_per_question``, in the dev file's order), for paired
        comparisons."""
        settings = self.settings
        starts, ends, eval_seconds, kind = self.logits(model, length_config)
        predictions, nbest = postprocess.postprocess_predictions(
            self.examples, self.features, starts, ends, settings.n_best_size, settings.max_answer_length)
        scores = evaluate_answers(self.gold, predictions)
        full_macs = self.macs(model.config, None, kind)
        macs = self.macs(model.config, length_config, kind)
        if write_predictions:
            postprocess.write_predictions(predictions, nbest, settings.output_dir)
        extra = {"f1_per_question": per_question_f1(self.gold, predictions)} if per_question else {}
        return {"exact_match": scores["exact_match"], "f1": scores["f1"], **extra,
                "length_config": list(length_config) if length_config is not None else None,
                "macs": macs, "full_macs": full_macs, "macs_ratio": full_macs / macs,
                "macs_basis": self.macs_basis(kind), "batching": kind,
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
