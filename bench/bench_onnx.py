"""Speed of the same model through PyTorch fp32, ONNX Runtime fp32 and ONNX Runtime int8.

Each backend runs ``QuestionAnswerer.logits`` over the same SQuAD dev features (sorted by length,
each batch padded to its longest), at full length and at one length configuration; the rows are
timed interleaved (median of the repeats). ONNX files come from ``onnx_cache`` (exported once per
model, configuration and int8 setting). With ``--model`` a fine-tuned checkpoint and
``--questions N`` it also scores each row's predictions on the first N dev questions (official
SQuAD v1.1 metric), so int8's F1 loss is measured on the same run.

Example (all-MiniLM-L6-v2, 2 threads, batch 32, 96 features):
  python -m bench.bench_onnx --threads 2 --batch-size 32 --features 96 --repeats 5 \
      --length-config "[1.0, 1.0, 0.8, 0.6, 0.5, 0.4]"
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

REPO_ROOT = Path(__file__).resolve().parent.parent

import evaluate_squad
import inference
import length_drop
import utils_squad
from core import machine
from serving.onnx.int8 import Int8Settings
from tools.tiny_models import minilm_dir


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the all-MiniLM-L6-v2 package's)")
    p.add_argument("--dev-file", default=str(REPO_ROOT.parent / "shared" / "squad" / "dev-v1.1.json"))
    p.add_argument("--length-config", default="[1.0, 1.0, 0.8, 0.6, 0.5, 0.4]",
                   help="JSON list; rows at full length and at this configuration")
    p.add_argument("--max-seq-length", type=int, default=256)
    p.add_argument("--features", type=int, default=96, help="dev features timed (default 96)")
    p.add_argument("--questions", type=int, default=0, help="also score F1 on the first N dev questions")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--per-channel", choices=["no", "yes", "both"], default="both",
                   help="int8 weight scales per tensor, per output channel, or rows for both")
    p.add_argument("--cache-dir", default=None, help="ONNX cache folder (default: onnx_cache's)")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def answerers(folder, length_config, args) -> dict:
    """name -> QuestionAnswerer, every row with the same windows and batches."""
    settings = dict(max_seq_length=args.max_seq_length, batch_size=args.batch_size)
    rows = {"torch fp32": inference.QuestionAnswerer.from_pretrained(folder, length_config, threads=args.threads,
                                                                     **settings),
            "onnxruntime fp32": inference.onnx_question_answerer(folder, length_config, threads=args.threads,
                                                                 cache_dir=args.cache_dir, **settings)}
    channels = {"no": [False], "yes": [True], "both": [False, True]}[args.per_channel]
    for per_channel in channels:
        name = "onnxruntime int8" + (" per-channel" if per_channel else "")
        rows[name] = inference.onnx_question_answerer(
            folder, length_config, int8=True, threads=args.threads, cache_dir=args.cache_dir,
            int8_settings=Int8Settings(per_channel=per_channel), **settings)
    return rows


def time_interleaved(calls: dict, repeats: int) -> dict:
    for call in calls.values():  # warm-up
        call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def score(qa, examples) -> dict:
    """Official EM/F1 of the answerer's predictions on ``examples``."""
    predictions, _ = qa.predict(examples)
    gold = {e.qas_id: [a["text"] for a in e.answers] for e in examples}
    return evaluate_squad.evaluate_answers(gold, predictions)


def main(argv=None):
    args = parse_args(argv)
    folder = args.model or str(minilm_dir())
    examples = utils_squad.read_squad_examples(args.dev_file, is_training=False)
    config = length_drop.parse_length_config(args.length_config, json.loads(
        (Path(folder) / "config.json").read_text())["num_hidden_layers"], args.max_seq_length)
    results, full_torch = [], None
    for length_config in (None, config):
        rows = answerers(folder, length_config, args)
        first = next(iter(rows.values()))
        built = first.features(examples[:args.features])  # at least one window per question
        features = SimpleNamespace(**{name: getattr(built, name)[:args.features]
                                      for name in ("input_ids", "attention_mask", "token_type_ids")})
        seconds = time_interleaved({name: (lambda qa=qa: qa.logits(features)) for name, qa in rows.items()},
                                   args.repeats)
        base = seconds["torch fp32"]
        full_torch = full_torch or base  # the first pass is at full length
        for name, qa in rows.items():
            row = {"length_config": length_config, "backend": name, "seconds": round(seconds[name], 3),
                   "speedup_vs_torch_fp32": round(base / seconds[name], 2),
                   "speedup_vs_torch_fp32_full_length": round(full_torch / seconds[name], 2)}
            if args.questions:
                metrics = score(qa, examples[:args.questions])
                row.update(exact_match=round(metrics["exact_match"], 2), f1=round(metrics["f1"], 2))
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps({"machine": machine.machine_info(), "rows": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
