"""Serving benchmark: our length-adaptive model against what a user runs instead.

On one trained checkpoint and the same dev questions, every system answers the questions and is
timed side by side (interleaved repeats, medians) at each thread count and batch size:

  transformers (SDPA, the checkpoint loaded by ``transformers.BertForQuestionAnswering``):
    padded to the model's window (its max_seq_length: 384 in the paper's baseline) in file
    order; each batch padded to its longest, file order; batches sorted by length, padded to
    their longest, in float32, in bfloat16 (the weights cast, as ``dtype=torch.bfloat16`` loads
    them) and in bfloat16 autocast (both where the CPU has bfloat16 instructions; elsewhere the row
    says why not);
    ONNX Runtime fp32, dynamic int8 (``quantize_dynamic`` with its defaults) and static int8
    (QDQ, per-channel weights, calibrated on ``--calibration_file``'s features as ours are, the
    same layers kept in float32) of transformers' model exported with ``torch.onnx.export``,
    sorted; torch ``quantize_dynamic`` int8 (``nn.Linear``), sorted;
  ours (``inference.QuestionAnswerer``, sorted, longest-padded): each ``--config`` (full length,
    absolute and relative configurations) with each of ``--backends``: torch (fp32), bf16 (torch,
    bfloat16 weights, token scorers float32), onnxruntime (fp32), int8 (ONNX Runtime dynamic), int8-static (ONNX Runtime
    static, ``--int8_calibration``).

F1 and EM (the official metric) come from one pass over all the questions per system, at the
largest batch size (a relative configuration resolves against each example's own length, so the
batch size changes no answer); each row names its drop criterion. Times come from
the first ``--time_features`` features (sorted systems sort within them). Speedups are given
against transformers sorted + longest (what a user would pick) and against padding to the
window, and against transformers in bfloat16 (weights) sorted + longest where the CPU has it. Each system's F1 is
compared question by question with the same weights at full length in float32 (transformers
sorted + longest): the mean difference with a 95% interval, so a 1% loss is resolvable on enough
questions; a bfloat16 or int8 system is also compared with its float32 twin (same model,
configuration and backend family), which is what its precision costs. The padded and file-order
baselines differ from sorted + longest only by batching, and the float32 ONNX Runtime systems from
their torch twins only by the runtime (their logits on real tokens agree to float32 rounding:
tests/serving/test_onnx.py), as are ours in float32 at full length on the baselines' own backbone
and transformers' model (tests/paper), so they take that F1 rather than answer every question again.

The results JSON records the machine (``core.machine.machine_info``: CPU model, cores, ISA flags,
libraries, the kernels oneDNN picked), and the table starts with its CPU line.

    python -m bench.bench_serving --model DIR --dev_file ../shared/squad/dev-v1.1.json \\
        --max_questions 500 --config full --config 'abs:[...]' --config 'rel:[...]' \\
        --threads 1,2 --batch_sizes 1,32 --calibration_file ../shared/squad/train-v1.1-subset.json \
        --output bench/results/serving.json
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent

from core import batching, files, machine
from core.hashing import file_sha256
from core.forward import TorchLogits
from core import postprocess
import utils_squad
from evaluate_squad import evaluate_answers, per_question_f1
from inference import QuestionAnswerer, onnx_question_answerer
from serving.onnx.calibration import calibration_features
from serving.onnx.int8 import CalibrationReader
from core.checks import read_model_config, token_selection

@dataclass
class Batch:
    rows: np.ndarray          # feature indices
    inputs: tuple             # input_ids, attention_mask, token_type_ids (torch, int64)


@dataclass
class System:
    name: str
    family: str               # "transformers" or "ours"
    order: str                # "file" or "sorted"
    pad: str                  # "max" or "longest"
    run: batching.Forward     # (input_ids, attention_mask, token_type_ids) -> (start_logits, end_logits) numpy
    length_config: object = None
    drop_criterion: str | None = None  # ours: the model's token selection ("attention", "learned"); None: drops nothing
    precision: str = "fp32"   # "fp32", "bf16" (weights), "bf16-autocast", "int8" (dynamic) or "int8-static"
    twin: str | None = None   # bf16 and int8: the float32 system of the same model, configuration and family
    scored_as: str | None = None  # a system whose logits these are (only the batching differs): its F1

    def plan(self, features, rows: np.ndarray, batch_size: int) -> list[tuple[np.ndarray, int]]:
        """``batching.batch_plan`` of the features ``rows``, in this system's order and padding."""
        lengths = batching.real_lengths(features.attention_mask[rows])
        plan = batching.batch_plan(lengths, features.input_ids.shape[1], batch_size, self.pad == "max",
                                   sort=self.order == "sorted")
        return [(rows[index], width) for index, width in plan]


def make_batches(system: System, features, rows: np.ndarray, batch_size: int) -> list[Batch]:
    """The system's batches of the features ``rows``, cut ahead of the timing."""
    inputs = (features.input_ids, features.attention_mask, features.token_type_ids)
    return [Batch(index, batching.batch_inputs(inputs, index, width))
            for index, width in system.plan(features, rows, batch_size)]


# ---- systems ---------------------------------------------------------------------------------

def ort_session(path, threads: int):
    """An ONNX Runtime CPU session of ``path`` on ``threads`` intra-op threads (one inter-op)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_runner(path, threads):
    session = ort_session(path, threads)
    names = [i.name for i in session.get_inputs()]

    def run(*inputs):
        feed = dict(zip(("input_ids", "attention_mask", "token_type_ids"), inputs))
        start, end = session.run(None, {k: feed[k].numpy() for k in names})
        return start, end
    return run


def export_transformers_onnx(model, path: Path) -> None:
    """transformers' model as a user exports it: torch.onnx.export, dynamic batch and sequence."""
    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.start_logits, out.end_logits

    example = tuple(torch.ones(2, 16, dtype=torch.long) for _ in range(3))
    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(Logits().eval(), example, str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=["start_logits", "end_logits"],
                      dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                                    "start_logits": axes, "end_logits": axes})


def quantize_onnx(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)


# transformers' export (TorchScript exporter) names nodes by module path: the layers our static
# int8 keeps in float32 (serving.onnx.int8.STATIC_KEEP_FP32), the same for the baseline
TRANSFORMERS_STATIC_KEEP = re.compile(r"/model/(bert/encoder/layer\.\d+/output/dense|qa_outputs)/MatMul")


def quantize_onnx_static(source: Path, target: Path, calibration) -> None:
    """ONNX Runtime static int8 of transformers' export, as ours is made (QDQ, per-channel int8
    weights, uint8 activations, MatMuls with a constant weight, the same layers in float32)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    proto = onnx.load(str(source))
    keep = [n.name for n in proto.graph.node if TRANSFORMERS_STATIC_KEEP.fullmatch(n.name)]
    if len(keep) < 2:  # the exporter's names changed: say so rather than quantise those layers silently
        raise SystemExit(f"{source}: no feed-forward output or QA head MatMul nodes named as expected")
    reader = CalibrationReader(calibration.batches, [i.name for i in proto.graph.input])
    quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=keep, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True, "ActivationSymmetric": False})


BASELINES = ("padded", "longest", "sorted", "bf16", "bf16-autocast", "ort-fp32", "ort-int8", "ort-int8-static",
             "torch-int8")


def baseline_systems(model_dir: Path, threads: int, workdir: Path, chosen=BASELINES,
                     calibration=None) -> list[System]:
    """transformers' systems of ``chosen`` (``BASELINES`` names); "sorted" is always run (the
    F1 reference). bf16 needs the CPU's bfloat16 instructions, static int8 a ``calibration``."""
    hf = transformers.BertForQuestionAnswering.from_pretrained(str(model_dir), attn_implementation="sdpa").eval()
    fp32, int8, static = (workdir / f"transformers{kind}.onnx" for kind in ("", ".int8", ".int8-static"))
    if not fp32.is_file():
        with torch.no_grad():
            export_transformers_onnx(hf, fp32)
        quantize_onnx(fp32, int8)
    if "ort-int8-static" in chosen and calibration is not None and not static.is_file():
        quantize_onnx_static(fp32, static, calibration)
    run_hf = TorchLogits(hf)
    systems = {
        "padded": lambda: System(PADDED, "transformers", "file", "max", run_hf, scored_as=F1_REFERENCE),
        "longest": lambda: System("transformers, longest, file order", "transformers", "file", "longest", run_hf,
                                  scored_as=F1_REFERENCE),
        "sorted": lambda: System(F1_REFERENCE, "transformers", "sorted", "longest", run_hf),
        "bf16": lambda: System(BF16_REFERENCE, "transformers", "sorted", "longest", TorchLogits(hf, precision="bf16"),
                               precision="bf16", twin=F1_REFERENCE),
        "bf16-autocast": lambda: System("transformers bf16 autocast, sorted + longest", "transformers", "sorted",
                                        "longest", TorchLogits(hf, precision="bf16-autocast"),
                                        precision="bf16-autocast", twin=F1_REFERENCE),
        "ort-fp32": lambda: System(ORT_FP32, "transformers", "sorted", "longest", ort_runner(fp32, threads),
                                   scored_as=F1_REFERENCE),
        "ort-int8": lambda: System("ONNX Runtime int8, sorted", "transformers", "sorted", "longest",
                                   ort_runner(int8, threads), precision="int8", twin=ORT_FP32),
        "ort-int8-static": lambda: System("ONNX Runtime static int8, sorted", "transformers", "sorted", "longest",
                                          ort_runner(static, threads), precision="int8-static", twin=ORT_FP32),
        "torch-int8": lambda: System("torch quantize_dynamic int8, sorted", "transformers", "sorted", "longest",
                                     TorchLogits(torch.ao.quantization.quantize_dynamic(
                                         hf, {torch.nn.Linear}, dtype=torch.qint8)),
                                     precision="int8", twin=F1_REFERENCE),
    }
    return [systems[name]() for name in BASELINES if name in chosen or name == "sorted"
            if available(name, calibration) is None]


def available(name: str, calibration) -> str | None:
    """None where the system can run here; else why not (a row says so instead of a number)."""
    if name in ("bf16", "bf16-autocast", "ours-bf16"):
        return machine.bf16_problem()
    if name in ("ort-int8-static", "ours-int8-static") and calibration is None:
        return "no --calibration_file given"
    return None


def parse_config(text: str):
    """'full', 'NAME:JSON' -> (name, config or None)."""
    if text == "full":
        return "full length", None
    name, _, value = text.partition(":")
    if not value:
        raise SystemExit(f"--config {text!r}: expected 'full' or NAME:JSON, e.g. 'rel:[1.0, 0.8, 0.6]'")
    return name, json.loads(value)


def same_backbone(model_dir: Path, reference: Path) -> bool:
    """Whether two folders hold the same model.safetensors (a learned model's scorers are a file of
    their own, so its backbone can be its parent's to the byte)."""
    files_ = [Path(d) / "model.safetensors" for d in (model_dir, reference)]
    return all(f.is_file() for f in files_) and len({file_sha256(f) for f in files_}) == 1


def our_systems(model_dirs, configs, backends, threads: int, workdir: Path, calibration_file=None,
                reference: Path | None = None) -> list[System]:
    """Ours, per model folder, configuration and backend, through the inference module's own API:
    the logits provider a ``QuestionAnswerer`` runs (the torch model, or the ONNX Runtime session).
    Each folder's config.json gives its drop criterion; with several folders (one backbone, the
    paper's criterion and the learned one) the name says which."""
    systems = []
    for model_dir in model_dirs:
        criterion = token_selection(read_model_config(model_dir))["drop_criterion"]
        tag = f" {criterion}" if len(model_dirs) > 1 else ""
        for name, config in configs:
            for backend in backends:
                if available(f"ours-{backend}", calibration_file) is not None:
                    continue
                qa = our_answerer(model_dir, config, backend, threads, workdir, calibration_file)
                twin = OUR_TWINS.get(backend)
                if twin == "onnxruntime" and twin not in backends and "torch" in backends:
                    twin = "torch"  # the same float32 logits (tests/serving/test_onnx.py)
                systems.append(System(f"ours{tag} {backend}, {name}", "ours", "sorted", "longest", qa.provider,
                                      config, criterion if config is not None else None,
                                      precision=OUR_PRECISIONS[backend],
                                      twin=None if twin is None else f"ours{tag} {twin}, {name}",
                                      scored_as=scored_as(model_dir, config, backend, backends, reference,
                                                          f"ours{tag} torch, {name}")))
    return systems


def scored_as(model_dir, config, backend, backends, reference, torch_twin) -> str | None:
    """The system whose logits these are, if another one computes them: ours in float32 at full
    length on the baselines' backbone is transformers' model (tests/paper), and ours on ONNX
    Runtime float32 is its torch twin."""
    if backend in ("torch", "onnxruntime") and config is None and reference is not None \
            and same_backbone(model_dir, reference):
        return F1_REFERENCE
    if backend == "onnxruntime" and "torch" in backends:
        return torch_twin
    return None


OUR_PRECISIONS = {"torch": "fp32", "bf16": "bf16", "onnxruntime": "fp32", "int8": "int8", "int8-static": "int8-static"}
OUR_TWINS = {"bf16": "torch", "int8": "onnxruntime", "int8-static": "onnxruntime"}


def our_answerer(model_dir, config, backend, threads, workdir, calibration_file=None):
    if backend in ("torch", "bf16"):
        return QuestionAnswerer.from_pretrained(model_dir, length_config=config, threads=threads,
                                                precision="bf16" if backend == "bf16" else "fp32")
    if backend in ("onnxruntime", "int8", "int8-static"):
        static = {"int8_calibration": str(calibration_file)} if backend == "int8-static" else {}
        return onnx_question_answerer(model_dir, config, int8=backend != "onnxruntime", threads=threads,
                                      cache_dir=workdir / "ours", **static)
    raise SystemExit(f"--backends: unknown backend {backend!r} ({', '.join(OUR_PRECISIONS)})")


# ---- measuring -------------------------------------------------------------------------------

# Idle threads of the runtime that ran last (torch's OpenMP, ONNX Runtime's pool) spin for a while
# before they sleep; on 2 cores they took a fifth of the next system's time (measured on a 2-core
# Xeon: ours at full length 27% slower than transformers after ONNX Runtime rows, level without them).
SETTLE_SECONDS = 0.5


def time_systems(systems, batches_of, repeats: int, desc: str) -> dict:
    """Median seconds per system over ``repeats`` interleaved rounds, each system's run started
    after ``SETTLE_SECONDS`` of quiet, so it is timed as it would run alone."""
    for system in systems:  # warm-up
        for batch in batches_of[system.name]:
            system.run(*batch.inputs)
    times = {s.name: [] for s in systems}
    for _ in tqdm(range(repeats), desc=desc, leave=False):
        for system in systems:
            time.sleep(SETTLE_SECONDS)
            start = time.perf_counter()
            for batch in batches_of[system.name]:
                system.run(*batch.inputs)
            times[system.name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def score(system, examples, features, gold, batch_size) -> dict:
    inputs = (features.input_ids, features.attention_mask, features.token_type_ids)
    out = batching.plan_logits(system.run, inputs, system.plan(features, np.arange(len(features)), batch_size),
                               progress=True)
    starts, ends = out.starts, out.ends
    predictions, _ = postprocess.postprocess_predictions(examples, features, starts, ends, 20, 30)
    per_question = per_question_f1(gold, predictions)
    return {**evaluate_answers(gold, predictions), "f1_per_question": per_question}


# The same weights at full length in float32: every system's F1 is compared with it, question by question.
# Every feature padded to the window the model was trained with (training_args.json; 384 by default).
PADDED = "transformers, padded to max_seq_length"
F1_REFERENCE = "transformers, sorted + longest"
BF16_REFERENCE = "transformers bf16, sorted + longest"
ORT_FP32 = "ONNX Runtime fp32, sorted"


# What a row's F1 pass gives (kept by --scores_from): F1, EM and the paired differences
SCORE_KEYS = {"f1", "exact_match", *(f"{prefix}{k}" for prefix in ("", "twin_")
                                     for k in ("f1_diff", "f1_diff_ci95", "relative_f1_loss", "questions_changed"))}


def earlier_scores(paths) -> dict:
    """{system: its F1 pass's keys} from earlier results JSONs, a later file's row replacing an
    earlier one's. By system alone: its logits, so its F1, depend on neither batch size nor threads."""
    return {r["system"]: {k: v for k, v in r.items() if k in SCORE_KEYS}
            for path in paths for r in json.loads(Path(path).read_text())["rows"]
            if "unavailable" not in r and "f1" in r}


def paired_f1_difference(per_question: list[float], reference: list[float]) -> dict:
    """Mean F1 difference against the reference over the same questions, with a 95% interval
    (normal approximation of the paired differences' mean: 1.96 standard errors)."""
    diff = np.asarray(per_question) - np.asarray(reference)
    half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    mean_reference = float(np.mean(reference))
    return {"f1_diff": float(diff.mean()), "f1_diff_ci95": float(half),
            "relative_f1_loss": float(-diff.mean() / mean_reference) if mean_reference else float("nan"),
            "questions_changed": int((diff != 0).sum())}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path,
                   help="the checkpoint: transformers' baselines load its backbone, ours run it")
    p.add_argument("--ours", action="append", type=Path, default=None,
                   help="run ours on this folder instead (repeatable: e.g. the same backbone with the paper's "
                        "criterion and with learned token scorers); default: --model")
    p.add_argument("--dev_file", required=True)
    p.add_argument("--max_questions", type=int, default=500)
    p.add_argument("--config", action="append", default=None,
                   help="'full' or NAME:JSON (repeatable); default: full only")
    p.add_argument("--backends", default="torch,bf16,onnxruntime,int8,int8-static",
                   help="ours: comma list of torch (fp32), bf16 (torch, bfloat16 weights), onnxruntime (fp32), int8 (ONNX "
                        "Runtime dynamic), int8-static (ONNX Runtime static, needs --calibration_file)")
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help=f"transformers' systems, comma list of {', '.join(BASELINES)} (sorted always runs)")
    p.add_argument("--calibration_file", type=Path, default=None,
                   help="SQuAD file of training questions the static int8 systems (ours and the baseline) are "
                        "calibrated on; without it their rows say so")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batch_sizes", default="1,32")
    p.add_argument("--time_features", type=int, default=128, help="features timed at batch > 1")
    p.add_argument("--time_features_batch1", type=int, default=32, help="features timed at batch 1")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None, help="ONNX files (default: a temporary folder)")
    p.add_argument("--output", default=None, help="results JSON")
    p.add_argument("--plot", default=None, help="PNG: F1 against speedup at the largest threads and batch")
    p.add_argument("--scores_from", action="append", default=None,
                   help="take F1/EM from this earlier results JSON (same model, questions and systems) and "
                   "only time: for re-timing on a quieter machine (repeatable: a later file's row replaces an "
                   "earlier one's of the same system)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    threads_list = [int(t) for t in args.threads.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    configs = [parse_config(c) for c in (args.config or ["full"])]
    backends = args.backends.split(",")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_serving_"))
    workdir.mkdir(parents=True, exist_ok=True)

    baselines = args.baselines.split(",")
    unknown = sorted(set(baselines) - set(BASELINES)) + sorted(set(backends) - set(OUR_PRECISIONS))
    if unknown:
        raise SystemExit(f"--baselines/--backends: unknown {unknown}")
    info = machine.machine_info(kernels=True)
    print(f"machine: {machine.cpu_line(info)}; oneDNN kernels: {info.get('onednn_kernels')}")
    torch.set_num_threads(max(threads_list))
    probe = QuestionAnswerer.from_pretrained(args.model)
    calibration = None
    if args.calibration_file is not None:  # the baseline's static int8 (ours build the same in their cache)
        calibration = calibration_features(args.calibration_file, probe.tokenizer, 256, probe.max_seq_length,
                                           probe.doc_stride, probe.max_query_length)
    examples = utils_squad.read_squad_examples(args.dev_file, is_training=False)[:args.max_questions]
    features = probe.features(examples)
    gold = {ex.qas_id: [a["text"] for a in ex.answers] for ex in examples}
    n = len(features.input_ids)
    lengths = features.attention_mask.sum(1).float()
    print(f"{len(examples)} questions, {n} features, mean {lengths.mean():.0f} real tokens of "
          f"{features.input_ids.shape[1]}")

    earlier = None
    if args.scores_from:
        earlier = earlier_scores(args.scores_from)
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        systems = baseline_systems(args.model, threads, workdir, baselines, calibration) + our_systems(
            args.ours or [args.model], configs, backends, threads, workdir, args.calibration_file, args.model)
        missing = [repr(s.name) for s in systems if earlier is not None and s.name not in earlier]
        if missing:
            raise SystemExit(f"--scores_from {', '.join(args.scores_from)}: no row of {'; '.join(missing)}")
        for batch_size in batch_sizes:
            timed = np.arange(min(n, args.time_features_batch1 if batch_size == 1 else args.time_features))
            batches_of = {s.name: make_batches(s, features, timed, batch_size) for s in systems}
            seconds = time_systems(systems, batches_of, args.repeats, f"{threads} threads, batch {batch_size}")
            bases = {"speedup_vs_sorted": seconds[F1_REFERENCE], "speedup_vs_padded": seconds.get(PADDED),
                     "speedup_vs_bf16": seconds.get(BF16_REFERENCE)}
            for system in systems:
                row = dict(system=system.name, family=system.family, threads=threads, batch_size=batch_size,
                           length_config=system.length_config, drop_criterion=system.drop_criterion,
                           precision=system.precision, twin=system.twin, seconds=seconds[system.name],
                           timed_features=len(timed),
                           **{k: base / seconds[system.name] for k, base in bases.items() if base is not None})
                if earlier is not None:
                    rows.append({**row, **earlier[system.name]})
                    continue
                # Logits do not depend on the batching (a relative configuration resolves against each
                # example's own length): every system is scored once, at the largest batch size.
                needs_score = (threads == threads_list[-1] and batch_size == max(batch_sizes)
                               and system.scored_as is None)
                rows.append({**row, **(score(system, examples, features, gold, batch_size) if needs_score else {})})
    # Threads and batching do not change logits: copy each system's score to the rows not scored.
    scored = {(r["system"], r["batch_size"]): r for r in rows if "f1" in r}
    scored_as = {s.name: s.scored_as or s.name for s in systems}
    for r in rows:
        if "f1" not in r:
            source = scored[(scored_as[r["system"]], max(batch_sizes))]
            r.update({k: source[k] for k in ("f1", "exact_match", "f1_per_question") if k in source})
    per_question = {name: r["f1_per_question"] for (name, _), r in scored.items() if "f1_per_question" in r}
    # a twin that took another system's F1 (same logits) is compared through that system's answers
    per_question.update({name: per_question[source] for name, source in scored_as.items()
                         if name not in per_question and source in per_question})
    for r in rows:
        mine = r.pop("f1_per_question", None)
        if mine is not None and F1_REFERENCE in per_question:
            r.update(paired_f1_difference(mine, per_question[F1_REFERENCE]))
        if mine is not None and per_question.get(r["twin"]) is not None:  # what the precision costs
            r.update({f"twin_{k}": v for k, v in paired_f1_difference(mine, per_question[r["twin"]]).items()})
    rows += unavailable_rows(baselines, backends, args.ours or [args.model], configs, calibration)
    print(f"machine: {machine.cpu_line(info)}")
    print_table(rows)
    if args.output:
        files.atomic_write_json(args.output, dict(
            command=" ".join(sys.argv), machine=info, torch=torch.__version__, transformers=transformers.__version__,
            questions=len(examples), features=n, mean_real_tokens=float(lengths.mean()), rows=rows))
        print(f"wrote {args.output}")
    if args.plot:
        plot_f1_against_speedup(rows, args.plot, max(threads_list), max(batch_sizes))
        print(f"wrote {args.plot}")


def unavailable_rows(baselines, backends, model_dirs, configs, calibration) -> list[dict]:
    """A row per system this machine or these flags cannot run, saying why (instead of a number)."""
    rows = []
    for name in baselines:
        if available(name, calibration) is not None:
            rows.append(dict(system=f"transformers {name}", family="transformers", unavailable=available(name, calibration)))
    for backend in backends:
        why = available(f"ours-{backend}", calibration)
        if why is not None:
            rows += [dict(system=f"ours {backend}, {name}", family="ours", unavailable=why)
                     for name, _ in configs for _ in model_dirs]
    return rows


def _interval(r, prefix=""):
    return f"{r[prefix + 'f1_diff']:+.2f} +-{r[prefix + 'f1_diff_ci95']:.2f}" if prefix + "f1_diff" in r else ""


def print_table(rows):
    header = (f"{'system':<46} {'drops by':>9} {'thr':>3} {'batch':>5} {'ms/feat':>8} {'vs sorted':>9} {'vs bf16':>7} "
              f"{'vs pad':>7} {'F1':>6} {'EM':>6} {'dF1 (95%)':>14} {'vs fp32 twin':>14}")
    print(header)
    print("-" * len(header))
    for r in rows:
        if "unavailable" in r:
            print(f"{r['system']:<46} not run: {r['unavailable']}")
            continue
        bf16 = f"{r['speedup_vs_bf16']:>7.2f}" if "speedup_vs_bf16" in r else f"{'-':>7}"
        padded = f"{r['speedup_vs_padded']:>7.2f}" if "speedup_vs_padded" in r else f"{'-':>7}"
        print(f"{r['system']:<46} {r.get('drop_criterion') or '-':>9} {r['threads']:>3} {r['batch_size']:>5} "
              f"{1e3 * r['seconds'] / r['timed_features']:>8.2f} {r['speedup_vs_sorted']:>9.2f} {bf16} "
              f"{padded} {r['f1']:>6.2f} {r['exact_match']:>6.2f} {_interval(r):>14} {_interval(r, 'twin_'):>14}")


def plot_f1_against_speedup(rows, path, threads: int, batch_size: int) -> None:
    """F1 against speedup over transformers sorted + longest, one point per system (ours joined
    by backend across length configurations), at one thread count and batch size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in rows if r.get("threads") == threads and r.get("batch_size") == batch_size]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for r in chosen:  # baselines share one F1 (float32, full length): named in the legend, not beside
        if r["family"] != "ours":
            ax.scatter(r["speedup_vs_sorted"], r["f1"], marker="s", label=r["system"])
    backends = sorted({r["system"].split(",")[0] for r in chosen if r["family"] == "ours"})
    for backend in backends:
        points = sorted((r["speedup_vs_sorted"], r["f1"]) for r in chosen
                        if r["family"] == "ours" and r["system"].split(",")[0] == backend)
        ax.plot(*zip(*points), marker="o", label=backend)
    reference = next((r for r in chosen if r["system"] == F1_REFERENCE), None)
    if reference is not None:
        ax.axhline(reference["f1"] * 0.99, color="grey", linestyle=":", label="1% below full-length F1")
    ax.set_xlabel(f"speedup over transformers, sorted + longest ({threads} threads, batch {batch_size})")
    ax.set_ylabel("F1")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
