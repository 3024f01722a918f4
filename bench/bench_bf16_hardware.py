"""What bfloat16 costs without the CPU's bfloat16 instructions.

On a CPU that has them (``avx512_bf16``, ``amx_bf16``), oneDNN's ``ONEDNN_MAX_CPU_ISA`` caps the
instruction sets its kernels may use, so one machine times bfloat16 autocast against float32 as
it runs natively and as it runs on CPUs without them (AVX512_CORE: AVX-512 without BF16, the
AMD EPYC Zen 3 / Intel Skylake class; AVX2). Each cap runs in its own process (oneDNN reads the
variable once); float32 and bfloat16 batches are interleaved, medians of ``--repeats``.

    python -m bench.bench_bf16_hardware --model ../shared/models/minilm-squad-step1 --output bf16_hw.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from core import files, machine

CAPS = ("", "AVX512_CORE", "AVX2")  # "": no cap (what the CPU has)


def time_one_cap(model_dir: str, batch: int, width: int, repeats: int, threads: int) -> dict:
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.BertForQuestionAnswering.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (batch, width), generator=g)
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
    times = {"fp32": [], "bf16": []}

    def run(precision):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            model(**inputs)
    for precision in times:  # warm-up
        run(precision)
    for _ in range(repeats):
        for precision in times:
            start = time.perf_counter()
            run(precision)
            times[precision].append(time.perf_counter() - start)
    seconds = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds": seconds, "bf16_speedup": seconds["fp32"] / seconds["bf16"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output")
    p.add_argument("--one_cap", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    if args.one_cap:
        print(json.dumps(time_one_cap(args.model, args.batch, args.width, args.repeats, args.threads)))
        return
    info = machine.machine_info()
    print(f"machine: {machine.cpu_line(info)}; batch {args.batch} x {args.width} tokens, {args.threads} threads")
    results = {}
    for cap in CAPS:
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": cap} if cap else dict(os.environ)
        out = subprocess.run([sys.executable, "-m", "bench.bench_bf16_hardware", "--one_cap", "--model", args.model,
                              "--batch", str(args.batch), "--width", str(args.width), "--repeats", str(args.repeats),
                              "--threads", str(args.threads)], env=env, capture_output=True, text=True, check=True)
        results[cap or "native"] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[cap or "native"]
        print(f"{cap or 'native':<12} fp32 {r['seconds']['fp32']:.3f} s  bf16 {r['seconds']['bf16']:.3f} s  "
              f"bf16 speedup {r['bf16_speedup']:.2f}x")
    if args.output:
        files.atomic_write_json(args.output, {"command": " ".join(sys.argv), "machine": info, "batch": args.batch,
                                              "width": args.width, "threads": args.threads, "results": results})


if __name__ == "__main__":
    main()
