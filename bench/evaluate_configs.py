"""Score one checkpoint at many length configurations in one process (the model and the dev
features load once): constant keep-rates, explicit configurations, or the configurations of a
search's CSV (e.g. its Pareto front, to re-score on more questions than the search used).

    python -m bench.evaluate_configs --model CKPT --dev_file dev-v1.1.json --rates 1.0,0.9,0.8 \\
        --front search/pareto_front.csv --output scores.json [--bf16] [--max_questions N]

Writes a JSON list (one object per configuration: length_config, f1, exact_match, macs_ratio,
questions, source; with ``--paired`` also f1_diff, f1_diff_ci95 and relative_f1_loss against the
first model at full length, question by question) and prints a table. Same metric and post-processing as ``run_squad.py --do_eval``.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


import length_drop
import search
import utils_squad
from core import machine
from core.errors import UsageError
from training.evaluation import DevEvaluator
from training.flags import build_parser
from core.models import load_model, load_tokenizer
from training.runtime import setup_runtime
from training.settings import build_settings
from bench.bench_serving import paired_f1_difference


def front_configs(path: Path, pareto_only: bool) -> list[tuple[int, ...]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "length_config" not in rows[0]:
        raise ValueError(f"{path}: expected a search CSV with a length_config column")
    if pareto_only and "pareto" in rows[0]:
        rows = [r for r in rows if r["pareto"] == "1"]
    return [tuple(json.loads(r["length_config"])) for r in rows]


def label_of(path: str) -> str:
    """'runs/s4/checkpoint-best' -> 's4/checkpoint-best'."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.name.startswith("checkpoint") else path.name


def configs_to_score(a, layers: int) -> list[tuple[tuple[int, ...] | None, str]]:
    """(configuration or None for full length, where it came from) for a model of ``layers``."""
    configs = []
    if a.rates:
        for rate in search.parse_rates(a.rates):
            config = length_drop.constant_drop_config(a.max_seq_length, layers, 1.0 - rate)  # the sweep's rule
            configs.append((None if rate == 1.0 else config, f"rate {rate:g}"))
    for config in json.loads(a.configs) if a.configs else []:
        if len(config) == layers:  # several models may differ in depth: each scores its own
            configs.append((length_drop.parse_length_config(config, layers, a.max_seq_length), "given"))
    if a.front:
        for config in front_configs(Path(a.front), not a.all_rows):
            configs.append((config, f"front {Path(a.front).name}"))
    configs = [(c, src) for c, src in configs if c is None or len(c) == layers]
    if not configs:
        raise ValueError(f"no configuration for a {layers}-layer model: give --rates, --configs or --front")
    return configs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, action="append",
                   help="checkpoint folder; repeat to score several models on the same features")
    p.add_argument("--dev_file", required=True)
    p.add_argument("--output", required=True, help="JSON file for the scores")
    p.add_argument("--rates", default=None, help="constant keep-rates, e.g. 1.0,0.9,0.8 (search's sweep rule)")
    p.add_argument("--configs", default=None, help="JSON list of length configurations")
    p.add_argument("--front", default=None, help="a search CSV; its Pareto rows (or all, with --all_rows)")
    p.add_argument("--all_rows", action="store_true")
    p.add_argument("--max_seq_length", type=int, default=384)
    p.add_argument("--doc_stride", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--max_questions", type=int, default=None)
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--bf16", action="store_true", help="bfloat16 weights (token scorers float32)")
    p.add_argument("--drop_criterion", default=None, choices=["attention", "learned"],
                   help="run every model with this drop criterion (attention: the paper's, on the same "
                        "weights); default: each checkpoint's own")
    p.add_argument("--select_before_attention", action="store_true",
                   help="learned criterion: select before each layer's attention too")
    p.add_argument("--paired", action="store_true",
                   help="score the first model at full length first and give every row its F1 difference "
                        "from it, question by question, with a 95%% interval (the same backbone's models "
                        "share that reference: a learned checkpoint fit on a frozen parent, for one)")
    a = p.parse_args(argv)

    run_args = build_parser().parse_args([
        "--model_name_or_path", a.model[0], "--output_dir", str(Path(a.output).parent), "--do_eval",
        "--do_lower_case", "--predict_file", a.dev_file, "--max_seq_length", str(a.max_seq_length),
        "--doc_stride", str(a.doc_stride), "--per_gpu_eval_batch_size", str(a.batch_size),
        "--overwrite_output_dir", *(["--cache_dir", a.cache_dir] if a.cache_dir else []),
        *(["--bf16"] if a.bf16 else [])])
    try:
        settings = build_settings(run_args)
        runtime = setup_runtime(settings.runtime)
        tokenizer = load_tokenizer(settings.model.tokenizer_path, settings.model.do_lower_case)
        for path in a.model:
            if not Path(path).is_dir():
                raise UsageError(f"--model {path}: no such folder")
        evaluator = DevEvaluator(settings.eval, settings.data, tokenizer, runtime, a.max_questions)
    except UsageError as e:
        print(f"evaluate_configs.py: error: {e}", file=sys.stderr)
        return 2
    results, reference = [], None
    for path in a.model:
        overrides = {} if a.drop_criterion is None else {"drop_criterion": a.drop_criterion}
        if a.select_before_attention:
            overrides["select_before_attention"] = True
        model = load_model(path, **overrides).to(runtime.device).eval()
        try:
            configs = configs_to_score(a, model.config.num_hidden_layers)
        except ValueError as e:
            print(f"evaluate_configs.py: error: {e}", file=sys.stderr)
            return 2
        if a.paired and reference is None:
            reference = evaluator(model, None, write_predictions=False, per_question=True)["f1_per_question"]
        for config, source in configs:
            r = evaluator(model, config, write_predictions=False, per_question=a.paired)
            if a.paired:
                r.update(paired_f1_difference(r.pop("f1_per_question"), reference))
            r.update(source=source, label=label_of(path), model=path, drop_criterion=model.drop_criterion,
                     length_config=list(config) if config else [a.max_seq_length] * model.config.num_hidden_layers)
            results.append(r)
            print(f"{label_of(path):28s} {model.drop_criterion:9s} {source:24s} {str(r['length_config']):36s} MACs x{r['macs_ratio']:.2f} "
                  f"F1 {r['f1']:.2f} EM {r['exact_match']:.2f} ({r['questions']} q.)"
                  + (f" dF1 {r['f1_diff']:+.2f} +-{r['f1_diff_ci95']:.2f}" if a.paired else ""), flush=True)
    utils_squad.atomic_write_json(Path(a.output), {"machine": machine.machine_info(), "rows": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
