"""Keep what the scorer is sure of: a probability threshold per layer against keep fractions.

Under the learned drop criterion a layer can keep, for each example, the tokens its scorer puts
above a probability (``keep_thresholds``) instead of a fixed fraction of the example's length: an
example whose answer the scorer locates keeps few tokens, an uncertain one keeps more. This
measures whether that buys F1 at equal MACs. Every setting runs the same model on the same
questions, sorted batches padded to their longest; F1 with the official metric, each question
compared with the same model at full length (paired mean difference, 95% interval). MACs per
feature are ``length_drop.analytic_macs`` at the feature's own real length with the counts it
kept (a threshold) or its fractions' counts (a configuration), so both are counted alike, padding
excluded; the ratio is full length's mean over the setting's. With ``--time_features N`` each
setting is also timed on the first N features (sorted batches of ``--batch_size``, interleaved
repeats, medians): a threshold's batch is as wide as its widest row at every layer, so at batch
32 it saves less time than its MACs say.

    python -m bench.bench_thresholds --model FIT/checkpoint-last --dev_file dev-head.json \\
        --thresholds '[[0,0.3,0.3,0.3,0.3,0.3]]' --configs '[[1.0,0.9,0.81,0.729,0.6561,0.5905]]' \\
        --max_questions 2000 --bf16 --output thresholds.json
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

import length_drop
import utils_squad
from bench.bench_serving import System, make_batches, paired_f1_difference, time_systems
from core import batching, files, machine, postprocess
from core.errors import UsageError
from core.forward import TorchLogits
from evaluate_squad import evaluate_answers, per_question_f1
from inference import QuestionAnswerer


class ThresholdLogits(TorchLogits):
    """``TorchLogits`` at per-layer keep thresholds, recording each feature's real length and the
    tokens it kept per layer (the model's ``kept_counts``)."""

    def __init__(self, model, thresholds, precision: str = "fp32"):
        super().__init__(model, None, precision=precision)
        self.thresholds = tuple(thresholds)
        self.kept: list[tuple[int, tuple[int, ...]]] = []

    @torch.no_grad()
    def __call__(self, input_ids, attention_mask, token_type_ids):
        inputs = [torch.as_tensor(v).to(self.device) for v in (input_ids, attention_mask, token_type_ids)]
        out = self.model(*inputs, keep_thresholds=self.thresholds)
        lengths = inputs[1].sum(dim=1).tolist()
        self.kept += [(int(n), tuple(int(c) for c in row)) for n, row in zip(lengths, out.kept_counts.tolist())]
        return batching.to_numpy(out.start_logits), batching.to_numpy(out.end_logits)

    def mean_macs(self, config) -> float:
        return float(np.mean([length_drop.analytic_macs(config, n, counts) for n, counts in self.kept]))


def run_setting(forward, examples, features, gold, batch_size: int) -> dict:
    inputs = (features.input_ids, features.attention_mask, features.token_type_ids)
    out = batching.sorted_batch_logits(forward, inputs, batch_size, progress=True)
    predictions, _ = postprocess.postprocess_predictions(examples, features, out.starts, out.ends, 20, 30)
    return {**evaluate_answers(gold, predictions), "f1_per_question": per_question_f1(gold, predictions)}


def time_settings(forwards: list, features, count: int, batch_size: int, repeats: int) -> list[float]:
    """Seconds per forward over the first ``count`` features, sorted batches padded to their
    longest: ``bench_serving.time_systems`` (warm-up, interleaved repeats, medians)."""
    systems = [System(str(i), "ours", "sorted", "longest", forward) for i, forward in enumerate(forwards)]
    rows = np.arange(min(count, len(features.input_ids)))
    batches_of = {s.name: make_batches(s, features, rows, batch_size) for s in systems}
    seconds = time_systems(systems, batches_of, repeats, f"timing, batch {batch_size}")
    return [seconds[s.name] for s in systems]


def parse_lists(text: str, flag: str, layers: int) -> list[list[float]]:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise UsageError(f"{flag}: expected a JSON list of lists of {layers} numbers ({err})") from None
    if not isinstance(value, list) or not all(isinstance(v, list) and len(v) == layers for v in value):
        raise UsageError(f"{flag}: expected a JSON list of lists of {layers} numbers, got {text!r}")
    return value


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a checkpoint with the learned drop criterion")
    p.add_argument("--dev_file", required=True)
    p.add_argument("--thresholds", default="[]", help="JSON list of per-layer probability thresholds")
    p.add_argument("--configs", default="[]", help="JSON list of per-layer keep fractions, for comparison")
    p.add_argument("--max_questions", type=int, default=None)
    p.add_argument("--max_seq_length", type=int, default=256)
    p.add_argument("--doc_stride", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="bfloat16 weights (token scorers float32)")
    p.add_argument("--time_features", type=int, default=0, help="time each setting on this many features")
    p.add_argument("--time_batch_sizes", default="32", help="comma list of batch sizes to time at")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", default=None, help="results JSON")
    args = p.parse_args(argv)
    try:
        if args.output:
            files.check_output_file(args.output, "--output")
        qa = QuestionAnswerer.from_pretrained(args.model, threads=args.threads, max_seq_length=args.max_seq_length,
                                              doc_stride=args.doc_stride)
        if qa.model.drop_criterion != "learned":
            raise UsageError(f"--model {args.model}: thresholds need the learned drop criterion, this model's is "
                             f"{qa.model.drop_criterion!r}")
        layers = qa.model.config.num_hidden_layers
        thresholds = parse_lists(args.thresholds, "--thresholds", layers)
        configs = [length_drop.parse_length_config(json.dumps(c), layers, args.max_seq_length)
                   for c in parse_lists(args.configs, "--configs", layers)]
    except UsageError as err:
        sys.exit(f"bench_thresholds: {err}")
    precision = "bf16" if args.bf16 else "fp32"
    examples = utils_squad.read_squad_examples(args.dev_file, is_training=False)[:args.max_questions]
    features = qa.features(examples)
    gold = {e.qas_id: [a["text"] for a in e.answers] for e in examples}
    lengths = batching.real_lengths(features.attention_mask).tolist()
    config = qa.model.config
    full_macs = length_drop.mean_analytic_macs(config, lengths)

    full = TorchLogits(qa.model, None, precision=precision)
    reference = run_setting(full, examples, features, gold, args.batch_size)
    rows = [{"setting": "full length", "macs_ratio": 1.0, "f1": reference["f1"],
             "exact_match": reference["exact_match"]}]
    forwards = [full]
    for fractions in configs:
        forwards.append(TorchLogits(qa.model, fractions, precision=precision))
        r = run_setting(forwards[-1], examples, features, gold, args.batch_size)
        rows.append({"setting": "fractions", "length_config": list(fractions),
                     "macs_ratio": full_macs / length_drop.mean_analytic_macs(config, lengths, fractions),
                     "f1": r["f1"], "exact_match": r["exact_match"],
                     **paired_f1_difference(r["f1_per_question"], reference["f1_per_question"])})
    for values in thresholds:
        forward = ThresholdLogits(qa.model, values, precision)
        forwards.append(forward)
        r = run_setting(forward, examples, features, gold, args.batch_size)
        kept = np.asarray([counts for _, counts in forward.kept], dtype=float)
        real = np.asarray([n for n, _ in forward.kept], dtype=float)
        rows.append({"setting": "thresholds", "keep_thresholds": list(values),
                     "macs_ratio": full_macs / forward.mean_macs(config), "f1": r["f1"],
                     "exact_match": r["exact_match"],
                     "mean_kept_fraction": (kept / real[:, None]).mean(axis=0).round(4).tolist(),
                     **paired_f1_difference(r["f1_per_question"], reference["f1_per_question"])})
        forward.kept.clear()
    for batch_size in ([int(b) for b in args.time_batch_sizes.split(",")] if args.time_features else []):
        seconds = time_settings(forwards, features, args.time_features, batch_size, args.repeats)
        for i, row in enumerate(rows):
            row[f"seconds_batch{batch_size}"] = seconds[i]
            row[f"speedup_batch{batch_size}"] = seconds[0] / seconds[i]
    info = machine.machine_info()
    print(f"machine: {machine.cpu_line(info)}; {len(examples)} questions, {len(lengths)} features, {precision}")
    for r in rows:
        what = r.get("keep_thresholds") or r.get("length_config") or ""
        diff = f"{r['f1_diff']:+.2f} +-{r['f1_diff_ci95']:.2f}" if "f1_diff" in r else ""
        timed = "".join(f"  {k.split('_')[1]} {v:.2f}x" for k, v in r.items() if k.startswith("speedup_"))
        print(f"{r['setting']:<11} {json.dumps(what):<48} MACs {r['macs_ratio']:.2f}x  F1 {r['f1']:.2f} {diff}{timed}")
    if args.output:
        files.atomic_write_json(args.output, dict(
            command=" ".join(sys.argv), machine=info, questions=len(examples), features=len(lengths),
            precision=precision, batch_size=args.batch_size, time_features=args.time_features,
            threads=args.threads, rows=rows))
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
