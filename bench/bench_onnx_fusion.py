"""Our full-length ONNX graph against transformers' own export, under ONNX Runtime, fp32 and int8.

Exports the checkpoint four ways: transformers' ``BertForQuestionAnswering`` through
``torch.onnx.export`` (TorchScript, opset 17, as ``bench_serving.py``) and its int8
(``quantize_dynamic`` defaults); ours through ``onnx_export.export_onnx`` with and without the ONNX
Runtime fusions (``fuse``), each also as ``--int8`` (``onnx_export.quantize_int8``). Then runs every
file on the same dev features, sorted by length in batches padded to their longest, interleaved
round-robin (median of ``--repeats``), and prints ms per feature, the speedup over transformers'
export and the largest start-logit difference from it.

    python -m bench.bench_onnx_fusion --model ../shared/models/minilm-squad-step1 \\
        --dev_file ../shared/squad/dev-v1.1.json --max_questions 200 --threads 2 --batch_size 32
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent

from core import batching
from core import machine
from core import files
import utils_squad
from bench.bench_serving import export_transformers_onnx, ort_session, quantize_onnx
from core.models import load_model
from serving.onnx.export import export_onnx, quantize_int8


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a fine-tuned QA checkpoint folder")
    p.add_argument("--dev_file", required=True)
    p.add_argument("--max_questions", type=int, default=200)
    p.add_argument("--max_seq_length", type=int, default=384)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--output", default=None, help="results JSON")
    return p.parse_args(argv)


def export_all(model_dir: str, folder: Path) -> dict[str, Path]:
    import transformers

    paths = {name: folder / f"{name}.onnx" for name in
             ("transformers", "transformers int8", "ours unfused", "ours unfused int8", "ours", "ours int8")}
    hf = transformers.BertForQuestionAnswering.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    with torch.no_grad():
        export_transformers_onnx(hf, paths["transformers"])
    quantize_onnx(paths["transformers"], paths["transformers int8"])
    ours = load_model(model_dir).eval()
    export_onnx(ours, paths["ours unfused"], fuse=False)
    export_onnx(ours, paths["ours"])
    quantize_int8(paths["ours unfused"], paths["ours unfused int8"])
    quantize_int8(paths["ours"], paths["ours int8"])
    return paths


def main(argv=None) -> int:
    a = parse_args(argv)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(a.model)
    _, features = utils_squad.load_or_build_features(
        Path(a.dev_file), tokenizer, max_seq_length=a.max_seq_length, doc_stride=128, max_query_length=64,
        is_training=False, cache_dir=None, overwrite_cache=False, max_examples=a.max_questions)
    plan = batching.batch_plan(batching.real_lengths(features.attention_mask), features.input_ids.shape[1], a.batch_size)
    feeds = [{"input_ids": features.input_ids[i, :w].numpy(), "attention_mask": features.attention_mask[i, :w].numpy(),
              "token_type_ids": features.token_type_ids[i, :w].numpy()} for i, w in plan]
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {name: ort_session(path, a.threads) for name, path in export_all(a.model, Path(tmp)).items()}
        logits = {name: [s.run(None, feed)[0] for feed in feeds] for name, s in sessions.items()}  # warm-up
        times = {name: [] for name in sessions}
        for _ in range(a.repeats):
            for name, s in sessions.items():
                start = time.perf_counter()
                for feed in feeds:
                    s.run(None, feed)
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["transformers"])
    rows = []
    print(f"{len(features)} features of {a.max_questions} dev questions, sorted, batch {a.batch_size}, "
          f"{a.threads} threads, median of {a.repeats}")
    for name in sessions:
        seconds = statistics.median(times[name])
        diff = max(float(np.abs(x - y).max()) for x, y in zip(logits[name], logits["transformers"]))
        rows.append({"system": name, "ms_per_feature": 1e3 * seconds / len(features),
                     "speedup_vs_transformers_fp32": base / seconds, "max_start_logit_diff": diff})
        print(f"{name:20s} {rows[-1]['ms_per_feature']:7.2f} ms/feature  {base / seconds:5.2f}x  "
              f"max |start logit - transformers fp32| {diff:.1e}")
    if a.output:
        files.atomic_write_json(a.output, {"command": "python -m bench.bench_onnx_fusion " + " ".join(sys.argv[1:]),
                                           "features": len(features), "machine": machine.machine_info(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
