"""Measured speedups of searched length configurations on real SQuAD dev features.

For a trained checkpoint and the ``pareto_front.csv`` (or ``search_results.csv``) that the search
wrote, times on the same dev features, interleaved in one run:

* transformers' ``BertForQuestionAnswering`` (SDPA) with every batch padded to ``max_seq_length``
  (the paper's setting),
* the same with each batch padded only to its longest sequence (the honest baseline: SQuAD dev
  features hold about half real tokens),
* ours at each configuration of the front (padded to ``max_seq_length``, and padded to the longest:
  padding is dropped first, so both give the same answers).

Prints the F1 the search measured, the MACs ratio and the measured speedups against both baselines,
and writes them as JSON.

    python -m bench.bench_search_front --model CKPT --front SEARCH_DIR/pareto_front.csv \
        --max-seq-length 256 --features 256
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch
import transformers

REPO_ROOT = Path(__file__).resolve().parent.parent

import utils_squad
from core import machine
from bench.bench_inference import over_batches, time_interleaved
from length_drop import analytic_macs
from modeling_bert import BertForQuestionAnswering


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint folder the search ran on")
    p.add_argument("--front", required=True, help="pareto_front.csv or search_results.csv")
    p.add_argument("--dev-file", default=str(REPO_ROOT.parent / "shared" / "squad" / "dev-v1.1.json"))
    p.add_argument("--max-seq-length", type=int, default=384)
    p.add_argument("--doc-stride", type=int, default=128)
    p.add_argument("--features", type=int, default=256, help="dev features to time")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-configs", type=int, default=8, help="front rows to time (spread over MACs)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default=None, help="write the rows as JSON here")
    return p.parse_args(argv)


def front_rows(path: Path, limit: int) -> list[dict]:
    rows = [r for r in csv.DictReader(path.open()) if r.get("pareto", "True") in ("True", "true", "1")]
    rows.sort(key=lambda r: int(r["macs"]))
    if len(rows) > limit:  # keep the ends and an even spread between them
        step = (len(rows) - 1) / (limit - 1)
        rows = [rows[round(i * step)] for i in range(limit)]
    return rows


def batches(features, batch_size: int, pad_to_longest: bool):
    out = []
    for start in range(0, len(features), batch_size):
        ids = features.input_ids[start:start + batch_size]
        mask = features.attention_mask[start:start + batch_size]
        types = features.token_type_ids[start:start + batch_size]
        if pad_to_longest:
            longest = int(mask.sum(1).max())
            ids, mask, types = ids[:, :longest], mask[:, :longest], types[:, :longest]
        out.append((ids, mask, types))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    examples = utils_squad.read_squad_examples(args.dev_file, is_training=False)
    features = utils_squad.convert_examples_to_features(
        examples[: args.features], tokenizer, args.max_seq_length, args.doc_stride, is_training=False)
    n = min(args.features, len(features))
    features.input_ids, features.attention_mask, features.token_type_ids = (
        features.input_ids[:n], features.attention_mask[:n], features.token_type_ids[:n])
    padded = batches(features, args.batch_size, pad_to_longest=False)
    longest = batches(features, args.batch_size, pad_to_longest=True)

    theirs = transformers.BertForQuestionAnswering.from_pretrained(args.model, attn_implementation="sdpa").eval()
    ours = BertForQuestionAnswering.from_pretrained(args.model).eval()
    config = ours.config
    rows = front_rows(Path(args.front), args.max_configs)

    hf = lambda i, m, t: theirs(input_ids=i, attention_mask=m, token_type_ids=t)  # noqa: E731
    runs = {"transformers, padded to max": over_batches(hf, padded),
            "transformers, padded to longest": over_batches(hf, longest)}
    for row in rows:
        lengths = tuple(json.loads(row["length_config"]))
        runs[f"ours {list(lengths)}"] = over_batches(lambda i, m, t, c=lengths: ours(i, m, t, length_config=c), padded)
        runs[f"ours {list(lengths)}, longest"] = over_batches(lambda i, m, t, c=lengths: ours(i, m, t, length_config=c), longest)
    medians = time_interleaved(runs, args.repeats, "front")

    L = args.max_seq_length
    full_macs = analytic_macs(config, L) * n
    longest_macs = sum(b[0].size(0) * analytic_macs(config, b[0].size(1)) for b in longest)
    base, base_longest = medians["transformers, padded to max"], medians["transformers, padded to longest"]
    mean_tokens = float(features.attention_mask.sum(1).float().mean())
    results = [dict(model="transformers, padded to max", f1=None, macs_ratio=1.0, seconds=base,
                    speedup_vs_padded=1.0, speedup_vs_longest=base_longest / base),
               dict(model="transformers, padded to longest", f1=None, macs_ratio=full_macs / longest_macs,
                    seconds=base_longest, speedup_vs_padded=base / base_longest, speedup_vs_longest=1.0)]
    for row in rows:
        lengths = tuple(json.loads(row["length_config"]))
        for suffix in ("", ", longest"):
            name = f"ours {list(lengths)}{suffix}"
            batch_list = longest if suffix else padded
            macs = sum(b[0].size(0) * analytic_macs(config, b[0].size(1), [min(x, b[0].size(1)) for x in lengths])
                       for b in batch_list)
            results.append(dict(model=name, f1=float(row["f1"]), macs_ratio=full_macs / macs,
                                seconds=medians[name], speedup_vs_padded=base / medians[name],
                                speedup_vs_longest=base_longest / medians[name]))
    print(f"{n} dev features, batch {args.batch_size}, max_seq_length {L}, mean {mean_tokens:.0f} real tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"{'model':<58} {'F1':>6} {'MACs x':>7} {'s':>7} {'vs padded':>10} {'vs longest':>11}")
    for r in results:
        f1 = "" if r["f1"] is None else f"{r['f1']:.2f}"
        print(f"{r['model']:<58} {f1:>6} {r['macs_ratio']:>7.2f} {r['seconds']:>7.2f} "
              f"{r['speedup_vs_padded']:>10.2f} {r['speedup_vs_longest']:>11.2f}")
    if args.output:
        utils_squad.atomic_write_json(args.output, {"features": n, "mean_tokens": mean_tokens,
                                                    "machine": machine.machine_info(), "rows": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
