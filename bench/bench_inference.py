"""Inference latency of Drop-and-Restore vs transformers' BertForQuestionAnswering (SDPA).

For a TinyBERT-6L-768 configuration (random weights) at sequence length 384, times side by side,
in one run with interleaved repeats (medians), at each batch size:
  * transformers' BertForQuestionAnswering, attn_implementation="sdpa" (the baseline);
  * ours at full length;
  * ours at length configurations with about 1.5x, 2x and 3x fewer MACs (chosen with
    length_drop.analytic_macs), in two shapes: "rate" (every layer drops the same fraction of
    the tokens it receives, Dynamic-TinyBERT's --measure_rate) and "flat" (every layer keeps k).
Real-data rows: features of the SQuAD dev set (question + context, 384 tokens, stride 128),
batched in file order: transformers padded to 384 vs padded to each batch's longest feature,
and ours at the constant-rate length configurations, padded to 384 and to the longest (with
real-query significance the real-token outputs are the same; the length caps at the batch length).

Prints a table (latency, MACs ratio, measured speedup, speedup / MACs ratio) and writes JSON.
Example: python -m bench.bench_inference --batch-sizes 1,32 --repeats 5 --output bench/results.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent

import utils_squad
from core import machine
from length_drop import analytic_macs, constant_drop_config
from modeling_bert import BertForQuestionAnswering

TARGET_REDUCTIONS = (1.5, 2.0, 3.0)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes (default 1,32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per model at batch 1 (median)")
    parser.add_argument("--large-batch-repeats", type=int, default=3,
                        help="timed repeats per model at batch sizes > 8 (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seq-length", type=int, default=384)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dev-file", default=str(REPO_ROOT.parent / "shared" / "squad" / "dev-v1.1.json"),
                        help="SQuAD v1.1 dev JSON for the real-data rows ('' to skip)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer folder (default: the all-MiniLM-L6-v2 package's folder)")
    parser.add_argument("--real-features", type=int, default=32, help="dev features to time (default 32)")
    parser.add_argument("--real-batch-size", type=int, default=32)
    parser.add_argument("--output", default=None, help="write results JSON here")
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    except ValueError:
        parser.error(f"--batch-sizes: expected comma-separated integers, got {args.batch_sizes!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 1 or args.repeats < 1 or args.large_batch_repeats < 1:
        parser.error("--batch-sizes, --repeats and --large-batch-repeats must be positive")
    return args


def tinybert_6l_768() -> transformers.BertConfig:
    return transformers.BertConfig(num_hidden_layers=6, hidden_size=768, num_attention_heads=12,
                                   intermediate_size=3072, max_position_embeddings=512)


def rate_config_for(config, seq_length, target):
    """The constant-drop-rate configuration whose MACs reduction is closest to ``target``."""
    full = analytic_macs(config, seq_length)
    best = None
    for step in range(0, 951):
        lengths = constant_drop_config(seq_length, config.num_hidden_layers, step / 1000)
        ratio = full / analytic_macs(config, seq_length, lengths)
        if best is None or abs(ratio - target) < abs(best[1] - target):
            best = (lengths, ratio)
    return best[0]


def flat_config_for(config, seq_length, target):
    """(k, ..., k) with MACs reduction closest to ``target``."""
    full = analytic_macs(config, seq_length)
    return min(((k,) * config.num_hidden_layers for k in range(2, seq_length + 1)),
               key=lambda c: abs(full / analytic_macs(config, seq_length, c) - target))


def build_models(config, device):
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        hf_config = transformers.BertConfig.from_dict(config.to_dict())
        hf_config._attn_implementation = "sdpa"
        theirs = transformers.BertForQuestionAnswering(hf_config)
        theirs.save_pretrained(folder)
        ours = BertForQuestionAnswering.from_pretrained(folder)
    return theirs.eval().to(device), ours.eval().to(device)


def over_batches(call, batch_list):
    """A zero-argument run of ``call(input_ids, attention_mask, token_type_ids)`` over every batch,
    without autograd: what ``time_interleaved`` times."""
    def run():
        with torch.inference_mode():
            for ids, mask, types in batch_list:
                call(ids, mask, types)
    return run


def time_interleaved(runs: dict, repeats: int, desc: str) -> dict:
    """Median seconds per call of each zero-argument callable, repeats interleaved across them."""
    for run in runs.values():  # warm-up
        run()
    times = {name: [] for name in runs}
    for _ in tqdm(range(repeats), desc=desc, leave=False):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def squad_features(dev_file, tokenizer_dir, seq_length, limit):
    """(input_ids, token_type_ids) lists, real tokens only, of the first ``limit`` dev features,
    built by the project's SQuAD pipeline (windows of ``seq_length`` tokens, stride 128)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    examples = utils_squad.read_squad_examples(dev_file, is_training=False)[:limit]
    features = utils_squad.convert_examples_to_features(examples, tokenizer, seq_length, 128)
    lengths = features.attention_mask.sum(1).tolist()
    return [(features.input_ids[i, :n].tolist(), features.token_type_ids[i, :n].tolist())
            for i, n in enumerate(lengths[:limit])]


def pad_batch(features, length, device):
    ids = torch.zeros(len(features), length, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for row, (f_ids, f_types) in enumerate(features):
        ids[row, :len(f_ids)] = torch.tensor(f_ids)
        types[row, :len(f_types)] = torch.tensor(f_types)
        mask[row, :len(f_ids)] = 1
    return ids.to(device), mask.to(device), types.to(device)


def synthetic_rows(theirs, ours, config, configs, batch, args):
    device, seq = args.device, args.seq_length
    ids = torch.randint(1000, config.vocab_size, (batch, seq), device=device)
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    types[:, 64:] = 1
    runs = {"transformers sdpa": lambda: theirs(input_ids=ids, attention_mask=mask, token_type_ids=types),
            "ours full": lambda: ours(ids, mask, types)}
    for name, lengths in configs.items():
        runs[name] = lambda lengths=lengths: ours(ids, mask, types, length_config=lengths)
    repeats = args.repeats if batch <= 8 else args.large_batch_repeats
    medians = time_interleaved(runs, repeats, f"batch {batch}")
    full_macs = analytic_macs(config, seq)
    rows = []
    for name, seconds in medians.items():
        lengths = configs.get(name)
        macs_ratio = full_macs / analytic_macs(config, seq, lengths)
        speedup = medians["transformers sdpa"] / seconds
        rows.append(dict(setting=f"synthetic b={batch}", model=name, length_config=lengths, batch_size=batch,
                         latency_ms=seconds * 1e3, macs_ratio=macs_ratio, speedup=speedup,
                         speedup_vs_ours_full=medians["ours full"] / seconds,
                         speedup_over_macs_ratio=speedup / macs_ratio))
    return rows


def real_rows(theirs, ours, config, configs, args):
    tokenizer_dir = args.tokenizer
    if tokenizer_dir is None:
        from tools.tiny_models import minilm_dir

        tokenizer_dir = minilm_dir()
    if not args.dev_file or not Path(args.dev_file).is_file() or tokenizer_dir is None:
        print(f"real-data rows skipped: dev file {args.dev_file!r} or tokenizer {tokenizer_dir!r} missing")
        return []
    features = squad_features(args.dev_file, str(tokenizer_dir), args.seq_length, args.real_features)
    size, seq, device = args.real_batch_size, args.seq_length, args.device
    chunks = [features[i:i + size] for i in range(0, len(features), size)]
    padded = [pad_batch(chunk, seq, device) for chunk in chunks]
    longest = [pad_batch(chunk, max(len(f[0]) for f in chunk), device) for chunk in chunks]

    runs = {
        "transformers sdpa, padded to 384": over_batches(
            lambda i, m, t: theirs(input_ids=i, attention_mask=m, token_type_ids=t), padded),
        "transformers sdpa, padded to longest": over_batches(
            lambda i, m, t: theirs(input_ids=i, attention_mask=m, token_type_ids=t), longest),
    }
    for name, lengths in configs.items():
        if " rate " not in name:
            continue  # the constant-rate family only, to keep the run short
        runs[f"{name}, padded to 384"] = over_batches(
            lambda i, m, t, lengths=lengths: ours(i, m, t, length_config=lengths), padded)
        # Real-query significance makes padding irrelevant, so the two savings combine.
        runs[f"{name}, padded to longest"] = over_batches(
            lambda i, m, t, lengths=lengths: ours(i, m, t, length_config=lengths), longest)
    medians = time_interleaved(runs, args.large_batch_repeats, "real data")
    full_macs = analytic_macs(config, seq) * len(features)
    base = medians["transformers sdpa, padded to 384"]
    mean_tokens = statistics.mean(len(f[0]) for f in features)
    rows = []
    for name, seconds in medians.items():
        lengths = configs.get(name.split(",")[0])
        if "longest" in name:
            macs = sum(len(chunk) * analytic_macs(config, batch[0].size(1), lengths)
                       for chunk, batch in zip(chunks, longest))
        else:
            macs = analytic_macs(config, seq, lengths) * len(features)
        rows.append(dict(setting=f"SQuAD dev, {len(features)} features, b={size}, mean {mean_tokens:.0f} tokens",
                         model=name, length_config=lengths, batch_size=size, latency_ms=seconds * 1e3,
                         macs_ratio=full_macs / macs, speedup=base / seconds,
                         speedup_vs_longest=medians["transformers sdpa, padded to longest"] / seconds,
                         speedup_over_macs_ratio=base / seconds / (full_macs / macs)))
    return rows


def print_table(rows):
    header = f"{'setting':<44} {'model':<42} {'ms':>9} {'MACs x':>7} {'speedup':>8} {'sp/MACs':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['setting']:<44} {row['model']:<42} {row['latency_ms']:>9.1f} {row['macs_ratio']:>7.2f} "
              f"{row['speedup']:>8.2f} {row['speedup_over_macs_ratio']:>8.2f}")


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = tinybert_6l_768()
    theirs, ours = build_models(config, args.device)
    configs = {}
    for target in TARGET_REDUCTIONS:
        configs[f"ours rate {target:g}x"] = rate_config_for(config, args.seq_length, target)
    for target in TARGET_REDUCTIONS:
        configs[f"ours flat {target:g}x"] = flat_config_for(config, args.seq_length, target)
    for name, lengths in configs.items():
        print(f"{name}: {list(lengths)}  MACs x{analytic_macs(config, args.seq_length) / analytic_macs(config, args.seq_length, lengths):.2f}")
    rows = []
    with torch.inference_mode():
        for batch in args.batch_sizes:
            rows += synthetic_rows(theirs, ours, config, configs, batch, args)
        rows += real_rows(theirs, ours, config, configs, args)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"device {args.device}")
    print_table(rows)
    if args.output:
        result = dict(command=" ".join(sys.argv), machine=machine.machine_info(), torch=torch.__version__, transformers=transformers.__version__,
                      threads=torch.get_num_threads(), device=args.device, rows=rows)
        utils_squad.atomic_write_json(args.output, result)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
