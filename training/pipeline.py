"""What run_squad.py runs once its flags are parsed: flags -> settings -> tokenizer, models,
features, objective -> train / evaluate / search. Imported only then, so --help needs no torch."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch.distributed as dist

from search import menu as length_menu
import search
import utils_squad
from core.checks import token_selection
from core.hashing import file_sha256, weights_sha256
from training.checkpoints import recover_checkpoints, unwrap
from core.errors import UsageError
from training.evaluation import DevEvaluator, record_eval
from core.models import load_tokenizer
from training.loading import load_features, load_student_and_teacher
from training.objective import Objective
from training.runtime import set_seed, setup_runtime
from training.settings import Settings, build_settings
from training.loop import train

logger = logging.getLogger("run_squad")


def run(args) -> dict:
    """flags -> settings -> tokenizer, models, features, objective -> train / evaluate / search."""
    recover_interrupted_saves(args.output_dir, args.resume_from_checkpoint)
    settings = build_settings(args)
    runtime = setup_runtime(settings.runtime)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if runtime.is_main else logging.WARNING, force=True)
    set_seed(settings.runtime.seed)
    tokenizer = load_tokenizer(settings.model.tokenizer_path, settings.model.do_lower_case)
    model, teacher = load_student_and_teacher(settings.model, settings.objective, tokenizer, runtime)
    # The output folder is created by the first write into it, so a failed run leaves none.
    runtime.barrier()

    evaluator = None
    if settings.evaluates:
        evaluator = DevEvaluator(settings.eval, settings.data, tokenizer, runtime, settings.data.max_eval_questions)
    summary = {}
    if settings.do_train:
        summary.update(run_training(settings, model, teacher, tokenizer, runtime, evaluator))
    if settings.do_eval and runtime.is_main:
        summary["eval"] = run_evaluation(settings, model, evaluator, summary)
    if settings.do_search and runtime.is_main:
        summary["search_csv"] = str(run_search(settings, model, tokenizer, runtime))
    if runtime.world_size > 1:
        dist.destroy_process_group()
    return summary


def run_training(settings: Settings, model, teacher, tokenizer, runtime, evaluator) -> dict:
    """Train with the step's objective; returns {"train": summary, "last_eval": latest results}."""
    _, features = load_features(settings.data, tokenizer, runtime, True, settings.data.max_train_questions)
    if len(features) == 0:
        raise UsageError(f"--train_file {settings.data.train_path}: no training questions to learn from")
    writer = make_writer(settings.output_dir) if runtime.is_main else None
    summary = {}

    def eval_fn(m, step):
        results = evaluator(m, settings.model.length_config)
        if settings.train.track_length_configs:
            results["tracked"] = [tracked_summary(evaluator(m, c, write_predictions=False))
                                  for c in settings.train.track_length_configs]
        record_eval(settings.output_dir, results, step, writer)
        summary["last_eval"] = results
        return results

    summary["train"] = train(settings.train, settings.sandwich, settings.training_args, model, tokenizer,
                             Objective(settings.objective, teacher,
                                       real_tokens_only=settings.train.train_padding == "longest"),
                             features.train_dataset(), runtime,
                             eval_fn, writer)
    if writer is not None:
        writer.close()
    return summary


def tracked_summary(results: dict) -> dict:
    """What eval_results.json keeps of a tracked configuration's evaluation."""
    return {k: results[k] for k in ("length_config", "exact_match", "f1", "macs_ratio", "batching")}


def run_evaluation(settings: Settings, model, evaluator: DevEvaluator, summary: dict) -> dict:
    """--do_eval: the final model at --length_config, unless training's last step just did it."""
    trained = summary.get("train", {})
    if trained and trained["last_eval_step"] == trained["global_step"]:
        results = summary["last_eval"]  # the final model was just evaluated (and predictions written)
    else:
        results = evaluator(unwrap(model), settings.model.length_config)
        record_eval(settings.output_dir, results)
    print(json.dumps({k: results[k] for k in ("exact_match", "f1", "macs_ratio")}))
    return results


def run_search(settings: Settings, model, tokenizer, runtime) -> Path:
    """Step 5: the search on --search_batching batches, then the length menu the checkpoint keeps."""
    batching = search.resolve_batching(settings.search)
    evaluator = DevEvaluator(settings.eval, settings.data, tokenizer, runtime, settings.search.search_subset,
                             sorted_batches=batching == "sorted")
    model.eval()
    if batching == "sorted":
        evaluator.warm_up(model)  # the full row, timed first, would otherwise pay the one-time costs

    def evaluate_fn(length_config):
        r = evaluator(model, tuple(length_config), write_predictions=False)
        return {k: r[k] for k in ("f1", "exact_match", "macs", "eval_seconds", "questions")}

    max_seq_length = settings.data.max_seq_length
    full_macs = evaluator.macs(model.config, None, batching)  # the basis of every row's macs
    measured_on = search_measured_on(settings, model, tokenizer, batching)
    info = menu_info(settings, model.config, batching, measured_on)
    csv_path = search.run_search_from_args(settings.search, evaluate_fn, model.config.num_hidden_layers,
                                           max_seq_length, full_macs, settings.output_dir,
                                           measured_on=measured_on, menu_info=info)

    def forward_seconds(length_config) -> float:
        return evaluator.logits(model, length_config)[2]

    retime = batching == "sorted" and settings.search.search_retime_repeats > 0
    write_length_menu(settings, csv_path, model.config.num_hidden_layers, info, forward_seconds if retime else None)
    return csv_path


def menu_info(settings: Settings, model_config, batching: str, measured_on: dict) -> dict:
    """What the length menu records besides the rows (kept with a shared study for search.collect)."""
    s = settings.search
    return {"length_space": search.length_space_of(s), "batching": batching,
            "batch_size": settings.eval.per_gpu_eval_batch_size, "max_seq_length": settings.data.max_seq_length,
            "doc_stride": settings.data.doc_stride, "max_query_length": settings.data.max_query_length,
            "num_hidden_layers": model_config.num_hidden_layers, "objective": s.search_objective,
            **token_selection(model_config),
            "weights_sha256": measured_on["weights_sha256"], "predict_file_sha256": measured_on["predict_file_sha256"]}


def write_length_menu(settings: Settings, csv_path: Path, num_layers: int, info: dict, time_fn=None) -> Path:
    """The search's front as the model's length menu (length_menu.py), for inference.py --speedup.
    ``time_fn(length_config)``: seconds of one timed pass, to time the front again before the menu
    is built from it (``length_menu.retime_front``)."""
    s = settings.search
    space = search.space_from_args(s, num_layers, settings.data.max_seq_length)
    target = Path(s.search_menu) if s.search_menu else Path(settings.model.student_path) / length_menu.MENU_FILE
    rows = search.ResultStore(csv_path, space).rows
    if time_fn is not None:
        rows = length_menu.retime_front(rows, space.full_config, time_fn, s.search_retime_repeats)
        info = dict(info, retime_repeats=s.search_retime_repeats)
    return length_menu.write_search_menu(rows, space.full_config, info, csv_path, target,
                                         fallback_dir=Path(settings.output_dir))


def search_measured_on(settings: Settings, model, tokenizer, batching: str = "padded") -> dict:
    """What a search row's F1 depends on beyond the search's own settings: rows measured on
    other weights, data or lengths are never reused. On sorted batches the batch size too (it
    sets each batch's longest sequence, which relative configurations are fractions of)."""
    extra = {"eval_batch_size": settings.eval.per_gpu_eval_batch_size} if batching == "sorted" else {}
    selection = token_selection(model.config)
    if selection["drop_criterion"] != "attention":  # recorded when not the paper's, as the space and batching
        extra.update(selection)
    return {"weights_sha256": weights_sha256(model),
            "predict_file_sha256": file_sha256(settings.data.predict_path),
            "tokenizer": utils_squad.tokenizer_fingerprint(tokenizer),
            "doc_stride": settings.data.doc_stride, "max_query_length": settings.data.max_query_length,
            "max_answer_length": settings.eval.max_answer_length, "n_best_size": settings.eval.n_best_size,
            "precision": settings.eval.precision,
            "count_padding_queries": bool(getattr(model.config, "count_padding_queries", False)), **extra}


def recover_interrupted_saves(output_dir: str, resume_from_checkpoint: str | None) -> None:
    folders = {Path(output_dir)}
    if resume_from_checkpoint:
        folders.add(Path(resume_from_checkpoint).parent)
    for folder in sorted(folders):
        recover_checkpoints(folder)


def make_writer(output_dir: str):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(Path(output_dir) / "runs"))
