"""Measured speed of the reproduction's rows (docs/reproduction.md): the teacher's architecture
against the student at full length and at searched length configurations, on real SQuAD dev
features, all timed side by side in one interleaved run.

Baselines, as a user would run the teacher without this project:
* transformers' ``BertForQuestionAnswering`` (SDPA), every feature padded to ``max_seq_length``
  (the paper's baseline);
* the same on batches sorted by length, each padded to its longest feature.

The student runs (our model) padded to ``max_seq_length`` and on the same sorted, longest-padded
batches. Speed does not depend on the weights' values, only on the architecture and the
configuration, so any checkpoint of the right shape times the same (the rows' F1 come from
the GPU runs).

    python -m bench.bench_reproduction --teacher MINILM_DIR --student STUDENT_DIR \\
        --configs '[[262, 145, 103], [211, 136, 105]]' --threads 2 --features 128 --output speed.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import transformers

REPO_ROOT = Path(__file__).resolve().parent.parent

import utils_squad
from core import machine
from bench.bench_inference import over_batches, pad_batch, squad_features, time_interleaved
from length_drop import analytic_macs
from modeling_bert import BertForQuestionAnswering


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="folder of the teacher's architecture (e.g. all-MiniLM-L6-v2)")
    p.add_argument("--student", required=True, help="folder of the student (e.g. make_student.py's output)")
    p.add_argument("--configs", default="[]", help="JSON list of the student's length configurations")
    p.add_argument("--teacher-configs", default="[]",
                   help="JSON list of length configurations for the teacher's architecture (run by our model)")
    p.add_argument("--dev-file", default=str(REPO_ROOT.parent / "shared" / "squad" / "dev-v1.1.json"))
    p.add_argument("--max-seq-length", type=int, default=384)
    p.add_argument("--features", type=int, default=128, help="dev features to time")
    p.add_argument("--batch-sizes", default="16,1")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--output", default=None)
    return p.parse_args(argv)


def make_batches(features, batch_size: int, max_len: int, sort: bool, device):
    """Batches padded to ``max_len`` in file order, or sorted by length and padded to their longest."""
    order = sorted(range(len(features)), key=lambda i: len(features[i][0])) if sort else range(len(features))
    ordered = [features[i] for i in order]
    batches = []
    for start in range(0, len(ordered), batch_size):
        part = ordered[start:start + batch_size]
        length = max(len(ids) for ids, _ in part) if sort else max_len
        batches.append(pad_batch(part, length, device))
    return batches


def batches_macs(config, batches, length_config=None) -> int:
    return sum(ids.size(0) * analytic_macs(config, ids.size(1), None if length_config is None else
                                           [min(k, ids.size(1)) for k in length_config])
               for ids, _, _ in batches)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    features = squad_features(args.dev_file, args.student, args.max_seq_length, args.features)
    teacher = transformers.BertForQuestionAnswering.from_pretrained(
        args.teacher, attn_implementation="sdpa", dtype=dtype).to(device).eval()
    student = BertForQuestionAnswering.from_pretrained(args.student, dtype=dtype).to(device).eval()
    configs = [tuple(c) for c in json.loads(args.configs)]
    teacher_configs = [tuple(c) for c in json.loads(args.teacher_configs)]
    ours_teacher = (BertForQuestionAnswering.from_pretrained(args.teacher, dtype=dtype).to(device).eval()
                    if teacher_configs else None)
    rows = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        padded = make_batches(features, batch_size, args.max_seq_length, False, device)
        sorted_ = make_batches(features, batch_size, args.max_seq_length, True, device)

        hf = lambda i, m, t: teacher(input_ids=i, attention_mask=m, token_type_ids=t)  # noqa: E731
        runs = {("teacher", None, "padded"): (over_batches(hf, padded), teacher.config, padded),
                ("teacher", None, "sorted"): (over_batches(hf, sorted_), teacher.config, sorted_)}
        for config in [None, *configs]:
            call = lambda i, m, t, c=config: student(i, m, t, length_config=c)  # noqa: E731
            runs[("student", config, "padded")] = (over_batches(call, padded), student.config, padded)
            runs[("student", config, "sorted")] = (over_batches(call, sorted_), student.config, sorted_)
        for config in teacher_configs:
            call = lambda i, m, t, c=config: ours_teacher(i, m, t, length_config=c)  # noqa: E731
            runs[("teacher", config, "padded")] = (over_batches(call, padded), teacher.config, padded)
            runs[("teacher", config, "sorted")] = (over_batches(call, sorted_), teacher.config, sorted_)
        medians = time_interleaved({k: v[0] for k, v in runs.items()}, args.repeats, f"batch {batch_size}")
        base_padded = medians[("teacher", None, "padded")]
        base_sorted = medians[("teacher", None, "sorted")]
        teacher_macs = batches_macs(teacher.config, padded)
        for (model, config, batching), (_, model_config, batch_list) in runs.items():
            seconds = medians[(model, config, batching)]
            rows.append(dict(
                model=model, length_config=list(config) if config else None, batching=batching,
                batch_size=batch_size, seconds=seconds,
                macs_ratio_vs_teacher_padded=teacher_macs / batches_macs(model_config, batch_list, config),
                speedup_vs_teacher_padded=base_padded / seconds, speedup_vs_teacher_sorted=base_sorted / seconds))
    mean_tokens = sum(len(ids) for ids, _ in features) / len(features)
    print(f"{len(features)} dev features (mean {mean_tokens:.0f} real tokens of {args.max_seq_length}), "
          f"{args.threads} threads, {args.device} {args.dtype}")
    print(f"{'batch':>5} {'model':<8} {'length config':<18} {'batching':<8} {'s':>8} {'MACs x':>7} "
          f"{'vs padded':>10} {'vs sorted':>10}")
    for r in rows:
        print(f"{r['batch_size']:>5} {r['model']:<8} {str(r['length_config'] or 'full'):<18} {r['batching']:<8} "
              f"{r['seconds']:>8.3f} {r['macs_ratio_vs_teacher_padded']:>7.2f} "
              f"{r['speedup_vs_teacher_padded']:>10.2f} {r['speedup_vs_teacher_sorted']:>10.2f}")
    if args.output:
        utils_squad.atomic_write_json(args.output, {
            "features": len(features), "mean_tokens": mean_tokens, "threads": args.threads,
            "device": args.device, "dtype": args.dtype, "machine": machine.machine_info(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
