"""Training speed with batches padded to --max_seq_length against batches cut to their longest
real sequence (--train_padding longest), with and without --group_by_length.

For step 1 (span loss), step 3 (prediction distillation from a teacher) and a relative-space
step 4 (the sandwich with in-place distillation), each under the three batchings, the script runs
the training loop's own pieces (``training.epoch_batches``, ``training.train_step``, AdamW) on the
first ``--batches`` batches of epoch 0, interleaved round-robin over ``--repeats`` (median), so
all nine systems see the same machine load. It prints examples/s and each speedup over the padded
layout, and checks the maths: on a batch of median-length features, in eval mode (no dropout), the loss terms of
the padded batch (with the span softmaxes over real tokens) and of the same batch cut to its
longest sequence, and their differences.

    python -m bench.bench_training --model ../shared/models/minilm-squad-step1 \\
        --train_file ../shared/squad/train-v1.1-subset.json --threads 2

Writes ``--output`` (default ``local/bench_training.json``).
"""
from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

from core import files
from core import machine
import run_squad
from core.models import load_tokenizer
from training.loading import load_features, load_student_and_teacher
from training.objective import Objective, sub_models_for_step
from training.runtime import Runtime, set_seed
from training.settings import build_settings
from training.loop import epoch_batches, make_optimizer, train_step, trim_to_longest

STEPS = {
    "step1": [],
    "step3": ["--pred_distill", "--teacher_model_name_or_path", "{model}"],
    "step4_relative": ["--pred_distill", "--teacher_model_name_or_path", "{model}", "--length_adaptive",
                       "--length_space", "relative", "--sandwich_full_weight", "0.5"],
}
BATCHINGS = {"padded": ["--train_padding", "max_length"],
             "longest": ["--train_padding", "longest"],
             "longest_grouped": ["--train_padding", "longest", "--group_by_length"]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a fine-tuned QA checkpoint folder (also the teacher)")
    p.add_argument("--train_file", required=True, help="SQuAD v1.1 training file")
    p.add_argument("--max_questions", type=int, default=2000, help="first N training questions")
    p.add_argument("--max_seq_length", type=int, default=256)
    p.add_argument("--doc_stride", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--batches", type=int, default=4, help="timed batches per system and repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--steps", default=",".join(STEPS), help="which steps, comma-separated")
    p.add_argument("--output", default=str(REPO_ROOT / "local" / "bench_training.json"))
    return p.parse_args(argv)


def system_settings(a, step: str, batching: str, out: str):
    extra = [x.format(model=a.model) for x in STEPS[step]] + BATCHINGS[batching]
    argv = ["--model_name_or_path", a.model, "--train_file", a.train_file, "--do_train", "--do_lower_case",
            "--max_seq_length", str(a.max_seq_length), "--doc_stride", str(a.doc_stride),
            "--per_gpu_train_batch_size", str(a.batch_size), "--max_train_questions", str(a.max_questions),
            "--cache_dir", str(Path(out) / "cache"), "--output_dir", str(Path(out) / "unused"), *extra]
    return build_settings(run_squad.build_parser().parse_args(argv))


class System:
    """One (step, batching): its own copy of the model, optimizer, objective and batches."""

    def __init__(self, name, settings, model, teacher, dataset, runtime):
        self.name, self.settings = name, settings
        self.model = copy.deepcopy(model).train()
        self.optimizer, _ = make_optimizer(settings.train, self.model, 1000)
        self.objective = Objective(settings.objective, teacher,
                                   real_tokens_only=settings.train.train_padding == "longest")
        self.batches = epoch_batches(dataset, settings.train, 0, runtime)
        self.runtime = runtime
        self.rng = random.Random(settings.train.seed)
        self.seconds, self.features = [], []

    def run(self, count: int) -> None:
        start, n = time.perf_counter(), 0
        for _ in range(count):
            batch = next(self.batches)
            subs = sub_models_for_step(self.settings.sandwich, self.model.config.num_hidden_layers, self.rng)
            train_step("fp32", self.settings.sandwich, self.model, self.objective, batch, subs, 1.0,
                       self.runtime, None, True)
            self.optimizer.step()
            self.model.zero_grad(set_to_none=True)
            n += len(batch[0])
        self.seconds.append(time.perf_counter() - start)
        self.features.append(n)

    @property
    def examples_per_second(self) -> float:
        return statistics.median(f / s for f, s in zip(self.features, self.seconds))


def loss_check(settings, model, teacher, dataset, runtime) -> dict:
    """The loss terms of a batch of median-length features, padded (real-token softmaxes) against
    cut to its longest real sequence, in eval mode so that dropout does not differ."""
    model = copy.deepcopy(model).eval()
    objective = Objective(settings.objective, teacher, real_tokens_only=True)
    order = torch.argsort(dataset.tensors[1].sum(1), stable=True)
    size = settings.train.per_gpu_train_batch_size
    padded = dataset[order[len(order) // 2:][:size]]
    subs = sub_models_for_step(settings.sandwich, model.config.num_hidden_layers, random.Random(0))
    terms = [train_step("fp32", settings.sandwich, model, objective, b, subs, 1.0, runtime, None, True)
             for b in (padded, trim_to_longest(padded))]
    return {"padded_width": padded[0].shape[1], "trimmed_width": trim_to_longest(padded)[0].shape[1],
            "padded_terms": terms[0], "trimmed_terms": terms[1],
            "max_abs_difference": max(abs(terms[0][k] - terms[1][k]) for k in terms[0]),
            "loss_relative_difference": abs(terms[0]["loss"] - terms[1]["loss"]) / abs(terms[0]["loss"])}


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    runtime = Runtime(torch.device("cpu"))
    steps = a.steps.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        base = system_settings(a, steps[-1], "padded", tmp)
        tokenizer = load_tokenizer(base.model.tokenizer_path, base.model.do_lower_case)
        set_seed(0)
        model, teacher = load_student_and_teacher(base.model, base.objective, tokenizer, runtime)
        _, features = load_features(base.data, tokenizer, runtime, True, a.max_questions)
        dataset = features.train_dataset()
        systems = []
        for step in steps:
            for batching in BATCHINGS:
                settings = system_settings(a, step, batching, tmp)
                systems.append(System(f"{step}/{batching}", settings, model,
                                      teacher if settings.objective.distilling else None, dataset, runtime))
        checks = {step: loss_check(system_settings(a, step, "longest", tmp), model,
                                   teacher if STEPS[step] else None, dataset, runtime) for step in steps}
        for s in systems:  # untimed warm-up: one batch each
            s.run(1)
            s.seconds.clear(), s.features.clear()
        for _ in range(a.repeats):
            for s in systems:
                s.run(a.batches)
    lengths = features.attention_mask.sum(1).float()
    rows = []
    for s in systems:
        step = s.name.split("/")[0]
        padded = next(x for x in systems if x.name == f"{step}/padded")
        rows.append({"system": s.name, "examples_per_second": s.examples_per_second,
                     "speedup_over_padded": s.examples_per_second / padded.examples_per_second,
                     "seconds": s.seconds, "features": s.features})
    result = {"command": "python -m bench.bench_training " + " ".join(argv or sys.argv[1:]),
              "threads": torch.get_num_threads(), "features": len(features),
              "mean_real_length": lengths.mean().item(), "max_seq_length": a.max_seq_length,
              "rows": rows, "loss_checks": checks}
    print(f"{len(features)} features, mean real length {lengths.mean():.0f} of {a.max_seq_length}; "
          f"{torch.get_num_threads()} threads, batch {a.batch_size}, median of {a.repeats} x {a.batches} batches")
    print(f"{'system':32s} {'examples/s':>10s} {'speedup':>8s}")
    for r in rows:
        print(f"{r['system']:32s} {r['examples_per_second']:10.2f} {r['speedup_over_padded']:7.2f}x")
    for step, c in checks.items():
        print(f"{step}: padded ({c['padded_width']}) and cut ({c['trimmed_width']}) batch: loss differs by "
              f"{c['loss_relative_difference']:.1e} (relative), any term by at most {c['max_abs_difference']:.1e}")
    files.atomic_write_json(Path(a.output), {**result, "machine": machine.machine_info()})
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
