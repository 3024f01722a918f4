"""What per-example keep fractions cost: a relative configuration resolved against each example's
own length (what the model does) against the rule it replaced, fractions of each batch's longest
row (the same counts for every row of a batch, so an answer depended on its batch-mates).

Both rules give a batch the same width at every layer (the longest row's count), so they cost the
same MACs per batch; the per-example rule adds its bookkeeping (each row's count, the slots past
it kept frozen). Timed side by side on the same sorted, longest-padded batches, interleaved
repeats, medians; F1 with the official metric on every question, and each rule's answers at
batch 1 against batch 32 (the per-example rule must not change, the batch rule does).

    python -m bench.bench_per_example --model DIR --dev_file dev-v1.1.json --max_questions 1000 \\
        --config '[1, 0.9, 0.81, 0.729, 0.656, 0.59]' --time_features 256 --output per_example.json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
from tqdm import tqdm

import utils_squad
from core import machine
from core import batching, files, postprocess
from core.forward import TorchLogits
from evaluate_squad import evaluate_answers
from inference import QuestionAnswerer


class BatchLongestRule:
    """The replaced rule: every row keeps ``ceil(f * width)`` tokens, ``width`` the batch's longest
    real row (an absolute configuration per batch; a row shorter than that keeps all its tokens)."""

    def __init__(self, model, fractions):
        self.model, self.fractions = model, tuple(fractions)

    def __call__(self, input_ids, attention_mask, token_type_ids):
        width = int(torch.as_tensor(attention_mask).sum(1).max())
        counts = tuple(max(1, math.ceil(f * width - 1e-9)) for f in self.fractions)
        return TorchLogits(self.model, counts)(input_ids, attention_mask, token_type_ids)


def f1_of(forward, examples, features, gold, batch_size) -> tuple[float, dict]:
    inputs = (features.input_ids, features.attention_mask, features.token_type_ids)
    out = batching.sorted_batch_logits(forward, inputs, batch_size, progress=True)
    predictions, _ = postprocess.postprocess_predictions(examples, features, out.starts, out.ends, 20, 30)
    return evaluate_answers(gold, predictions)["f1"], predictions


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--dev_file", required=True)
    p.add_argument("--config", required=True, help="keep fractions per layer (JSON list)")
    p.add_argument("--max_questions", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--time_features", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    fractions = tuple(json.loads(args.config))
    if args.output:
        files.check_output_file(args.output, "--output")
    torch.set_num_threads(args.threads)
    qa = QuestionAnswerer.from_pretrained(args.model, length_config=fractions, threads=args.threads)
    examples = utils_squad.read_squad_examples(args.dev_file, is_training=False)[:args.max_questions]
    features = qa.features(examples)
    gold = {e.qas_id: [a["text"] for a in e.answers] for e in examples}
    rules = {"per example": TorchLogits(qa.model, fractions), "batch's longest": BatchLongestRule(qa.model, fractions)}

    results = {}
    for name, forward in rules.items():
        f1, predictions = f1_of(forward, examples, features, gold, args.batch_size)
        f1_batch1, predictions_batch1 = f1_of(forward, examples, features, gold, 1)
        changed = sum(predictions[q] != predictions_batch1[q] for q in predictions)
        results[name] = {"f1": f1, "f1_batch1": f1_batch1, "answers_changed_batch1": changed}

    timed = tuple(values[:args.time_features] for values in
                  (features.input_ids, features.attention_mask, features.token_type_ids))
    plan = batching.batch_plan(batching.real_lengths(timed[1]), timed[0].shape[1], args.batch_size)
    times = {name: [] for name in rules}
    for forward in rules.values():  # warm-up: every batch shape once
        batching.plan_logits(forward, timed, plan)
    for _ in tqdm(range(args.repeats), desc="timing", leave=False):
        for name, forward in rules.items():
            start = time.perf_counter()
            batching.plan_logits(forward, timed, plan)
            times[name].append(time.perf_counter() - start)
    for name in rules:
        results[name]["seconds"] = statistics.median(times[name])
    ratio = results["batch's longest"]["seconds"] / results["per example"]["seconds"]
    for name, r in results.items():
        print(f"{name:16s} F1 {r['f1']:.2f} (batch 1: {r['f1_batch1']:.2f}, {r['answers_changed_batch1']} answers "
              f"changed)  {r['seconds']:.2f} s for {len(timed[0])} features")
    print(f"per example / batch's longest time: {1 / ratio:.3f}")
    if args.output:
        files.atomic_write_json(args.output, {"config": list(fractions), "questions": len(examples),
                                              "timed_features": len(timed[0]), "batch_size": args.batch_size,
                                              "threads": args.threads, "machine": machine.machine_info(), "rules": results,
                                              "time_ratio_per_example_over_batch_rule": 1 / ratio})


if __name__ == "__main__":
    main()
