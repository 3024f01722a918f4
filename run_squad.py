"""Dynamic-TinyBERT on SQuAD 1.1: every paper step through one command line.

Step 1  fine-tune a teacher:                      --do_train
Step 2  intermediate-layer distillation:          --teacher_model_name_or_path T --state_loss_ratio 1 --att_loss_ratio 1 --att_mse
Step 3  prediction-layer distillation:            --teacher_model_name_or_path T --pred_distill
Step 4  LengthDrop training (sandwich rule):      ... --length_adaptive --num_sandwich 2 --length_drop_ratio_bound 0.2
Step 5  length-configuration search:              --do_search (see run-sigopt-search.sh)
Evaluation at any fixed length configuration:     --do_eval --length_config '[384, 320, 256, 192, 160, 128]'

All training steps share one loop (``train``); the flags only choose the objective (``Objective``).
Multi-GPU: ``torchrun --nproc_per_node N run_squad.py ...``.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

import distillation
import length_drop
import search
import utils_squad
from evaluate_squad import evaluate_answers
from modeling_bert import BertForQuestionAnswering

logger = logging.getLogger("run_squad")

TRAINING_STATE = "training_state.pt"


class UsageError(Exception):
    """A bad command line or input, reported as one clear line before any work starts."""


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    # Model and data (the reference's names).
    a("--model_type", default="bert", choices=["bert"], help="only BERT, as in the paper")
    a("--model_name_or_path", required=True, help="local folder of a BERT checkpoint (no model hub here)")
    a("--output_dir", required=True)
    a("--data_dir", default=None, help="folder with --train_file and --predict_file")
    a("--train_file", default="train-v1.1.json", help="inside --data_dir unless a path to a file")
    a("--predict_file", default="dev-v1.1.json", help="inside --data_dir unless a path to a file")
    a("--config_name", default=None)
    a("--tokenizer_name", default=None)
    a("--cache_dir", default=None, help="folder for the feature cache (default: --data_dir if writable, "
      "else --output_dir)")
    a("--overwrite_cache", action="store_true")
    a("--max_seq_length", type=int, default=384)
    a("--doc_stride", type=int, default=128)
    a("--max_query_length", type=int, default=64)
    a("--n_best_size", type=int, default=20)
    a("--max_answer_length", type=int, default=30)
    a("--do_lower_case", action="store_true", help="checked against the tokenizer, which decides")
    a("--max_train_questions", type=int, default=None, help="use only the first N training questions")
    a("--max_eval_questions", type=int, default=None, help="evaluate on the first N dev questions")
    # What to do.
    a("--do_train", action="store_true")
    a("--do_eval", action="store_true")
    a("--evaluate_during_training", action="store_true")
    a("--save_only_best", action="store_true")
    a("--overwrite_output_dir", action="store_true")
    a("--resume_from_checkpoint", default=None, help="a checkpoint folder written by this script")
    # Optimisation.
    a("--per_gpu_train_batch_size", type=int, default=8)
    a("--per_gpu_eval_batch_size", type=int, default=8)
    a("--learning_rate", type=float, default=5e-5)
    a("--gradient_accumulation_steps", type=int, default=1)
    a("--weight_decay", type=float, default=0.0)
    a("--adam_epsilon", type=float, default=1e-8)
    a("--max_grad_norm", type=float, default=1.0)
    a("--num_train_epochs", type=float, default=3.0)
    a("--max_steps", type=int, default=-1)
    a("--warmup_steps", type=int, default=0)
    a("--warmup_ratio", type=float, default=0.0)
    a("--logging_steps", type=int, default=500)
    a("--save_steps", type=int, default=500)
    a("--seed", type=int, default=42)
    a("--no_cuda", action="store_true")
    a("--fp16", action="store_true", help="float16 autocast with loss scaling (CUDA)")
    a("--bf16", action="store_true", help="bfloat16 autocast")
    a("--threads", type=int, default=None, help="torch CPU threads")
    a("--local_rank", type=int, default=-1, help="set by torch.distributed launchers")
    # Distillation (TinyBERT).
    a("--teacher_model_type", default=None, choices=[None, "bert"])
    a("--teacher_model_name_or_path", default=None)
    a("--state_loss_ratio", type=float, default=0.0)
    a("--att_loss_ratio", type=float, default=0.0)
    a("--pred_distill", action="store_true")
    a("--att_mse", action="store_true", help="attention MSE; else 1 - cosine (the reference's other form)")
    a("--attention_loss_input", default="scores", choices=["scores", "probabilities"],
      help="what the attention loss compares: pre-softmax scores (TinyBERT, default) or post-softmax, "
      "post-dropout probabilities (Intel's distill())")
    a("--temperature", type=float, default=1.0)
    # LengthDrop (LAT).
    a("--length_config", default=None, help="JSON list, one token count per layer, e.g. '[384, 320, 256]'")
    a("--length_adaptive", action="store_true", help="train with the sandwich rule (step 4)")
    a("--num_sandwich", type=int, default=2)
    a("--length_drop_ratio_bound", type=float, default=0.2)
    a("--layer_dropout_prob", type=float, default=None)
    a("--layer_dropout_bound", type=int, default=0, help="most layers a sub-model skips (LAT: a count)")
    a("--conventional_inplace_kl", action="store_true",
      help="sub-models minimise KL(full || sub) instead of the reference's KL(sub || full)")
    a("--sandwich_full_weight", type=float, default=None,
      help="the full model's share of the sandwich loss, in (0, 1]; the sub-models share the rest "
      "equally (default: the reference's 1 / (num_sandwich + 2) for every model)")
    search.add_search_args(p)
    return p


def resolve_data_file(args, name: str) -> Path:
    path = Path(name)
    if not path.is_file() and args.data_dir is not None:
        path = Path(args.data_dir) / name
    return path


def validate_args(args) -> None:
    """Every check that can fail, before anything is loaded or written."""
    if not (args.do_train or args.do_eval or args.do_search):
        raise UsageError("nothing to do: give --do_train, --do_eval or --do_search")
    if not Path(args.model_name_or_path).is_dir():
        raise UsageError(f"--model_name_or_path {args.model_name_or_path}: no such model folder "
                         "(models load from local folders; no model hub is reachable)")
    check_output_dir(Path(args.output_dir))
    check_model_folder(Path(args.model_name_or_path), "--model_name_or_path")
    check_tokenizer_folder(Path(args.tokenizer_name or args.model_name_or_path),
                           "--tokenizer_name" if args.tokenizer_name else "--model_name_or_path")
    check_size_flags(args)
    if args.do_train:
        args.train_path = resolve_data_file(args, args.train_file)
        if not args.train_path.is_file():
            raise UsageError(f"--train_file: {args.train_path} does not exist")
    if args.do_eval or args.evaluate_during_training or args.do_search:
        args.predict_path = resolve_data_file(args, args.predict_file)
        if not args.predict_path.is_file():
            raise UsageError(f"--predict_file: {args.predict_path} does not exist")
    distilling = args.pred_distill or args.state_loss_ratio > 0 or args.att_loss_ratio > 0
    if args.teacher_model_name_or_path and not distilling:
        raise UsageError("--teacher_model_name_or_path is given but no distillation flag "
                         "(--pred_distill, --state_loss_ratio > 0 or --att_loss_ratio > 0)")
    if distilling and not args.teacher_model_name_or_path:
        raise UsageError("a distillation flag (--pred_distill, --state_loss_ratio, --att_loss_ratio) "
                         "needs --teacher_model_name_or_path")
    if args.teacher_model_name_or_path and not Path(args.teacher_model_name_or_path).is_dir():
        raise UsageError(f"--teacher_model_name_or_path {args.teacher_model_name_or_path}: no such model folder")
    if args.teacher_model_name_or_path:
        check_model_folder(Path(args.teacher_model_name_or_path), "--teacher_model_name_or_path")
    if args.pred_distill and (args.state_loss_ratio > 0 or args.att_loss_ratio > 0):
        raise UsageError("--pred_distill (step 3) and --state_loss_ratio/--att_loss_ratio (step 2) "
                         "are separate steps; give one or the other")
    if args.length_config is not None and args.length_adaptive:
        raise UsageError("--length_config fixes one configuration; --length_adaptive trains all of "
                         "them: give one or the other")
    if args.resume_from_checkpoint and not (Path(args.resume_from_checkpoint) / TRAINING_STATE).is_file():
        raise UsageError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: no {TRAINING_STATE} "
                         "there (only checkpoints written by this script's training can be resumed)")
    if args.resume_from_checkpoint:
        check_model_folder(Path(args.resume_from_checkpoint), "--resume_from_checkpoint")
    if args.fp16 and args.bf16:
        raise UsageError("give at most one of --fp16 and --bf16")
    for flag in ("per_gpu_train_batch_size", "per_gpu_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be at least 1")
    if args.temperature <= 0:
        raise UsageError("--temperature must be positive")
    for flag in ("state_loss_ratio", "att_loss_ratio"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag} must be >= 0 (0 turns the loss off), got {getattr(args, flag)}")
    if args.sandwich_full_weight is not None:
        if not args.length_adaptive:
            raise UsageError("--sandwich_full_weight weights the sandwich: it needs --length_adaptive")
        if not 0 < args.sandwich_full_weight <= 1:
            raise UsageError(f"--sandwich_full_weight must be in (0, 1], got {args.sandwich_full_weight}")
    out = Path(args.output_dir)
    if (args.do_train or args.do_search) and out.is_dir() and any(out.iterdir()) \
            and not args.overwrite_output_dir:
        raise UsageError(f"--output_dir {out} exists and is not empty; use --overwrite_output_dir "
                         "to write into it (nothing else there is deleted)")
    earlier_predictions = [n for n in ("predictions.json", "nbest_predictions.json") if (out / n).exists()]
    if args.do_eval and earlier_predictions and not args.overwrite_output_dir:
        raise UsageError(f"--output_dir {out} holds an earlier run's {earlier_predictions[0]}; use "
                         "--overwrite_output_dir to replace it, or another --output_dir")


def check_size_flags(args) -> None:
    for flag in ("max_train_questions", "max_eval_questions"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag} must be at least 1, got {value} (leave it out to use every question)")


def check_output_dir(out: Path) -> None:
    """The output folder must be a folder, or creatable, and writable (mode bits too: root may
    write anywhere), before anything loads."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output_dir {out} is a file, not a folder")
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--output_dir {out} lies under {existing}, which is a file")
    if not _writable(existing):
        raise UsageError(f"--output_dir {out}: {existing} is not writable")


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_model_folder(folder: Path, flag: str) -> None:
    """A model folder needs a readable config.json and a weights file whose header is whole."""
    config = folder / "config.json"
    if not config.is_file():
        raise UsageError(f"{flag} {folder}: no config.json there (not a Hugging Face model folder)")
    try:
        loaded = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise UsageError(f"{flag}: {config} is not a valid JSON file ({e})") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"{flag}: {config} must hold a JSON object, got {type(loaded).__name__}")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise UsageError(f"{flag} {folder}: no weights file there (expected one of {', '.join(WEIGHT_FILES)})")
    if (folder / "model.safetensors").is_file():
        from safetensors import safe_open
        try:
            with safe_open(str(folder / "model.safetensors"), "pt"):
                pass  # the header and the file's length are checked on opening
        except Exception as e:  # SafetensorError: truncated or not a safetensors file
            raise UsageError(f"{flag}: {folder / 'model.safetensors'} is truncated or corrupt ({e})") from None


def check_tokenizer_folder(folder: Path, flag: str) -> None:
    if not folder.is_dir() or not any((folder / n).is_file() for n in ("tokenizer.json", "vocab.txt")):
        raise UsageError(f"{flag} {folder}: no tokenizer there (tokenizer.json or vocab.txt); give "
                         "--tokenizer_name a folder that has one")


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --------------------------------------------------------------------------------------------
# Runtime: device, distributed, seeds
# --------------------------------------------------------------------------------------------

@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = -1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def setup_runtime(args) -> Runtime:
    if args.threads:
        torch.set_num_threads(args.threads)
    use_cuda = torch.cuda.is_available() and not args.no_cuda
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", args.local_rank))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        return Runtime(device, dist.get_rank(), world_size, local_rank)
    return Runtime(torch.device("cuda" if use_cuda else "cpu"))


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def autocast_context(args, device: torch.device):
    if args.bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if args.fp16:
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# Models and data
# --------------------------------------------------------------------------------------------

def load_tokenizer(args):
    from transformers import AutoTokenizer

    name = args.tokenizer_name or args.model_name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise UsageError(f"{name}: cannot load the tokenizer ({first_line(e)})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"{name}: a fast tokenizer (tokenizer.json or vocab.txt) is needed for offsets")
    utils_squad.check_lower_case(tokenizer, args.do_lower_case)
    return tokenizer


def checkpoint_has_fit_dense(folder: str) -> bool:
    """Whether the checkpoint's weights include TinyBERT's ``fit_dense`` projection."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        from safetensors import safe_open
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            keys = list(f.keys())
    elif (folder / "pytorch_model.bin").is_file():
        keys = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True).keys()
    else:
        return False
    return any("fit_dense" in key for key in keys)


def load_model(path: str, config_name: str | None = None, **config_overrides) -> BertForQuestionAnswering:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(config_name or path)
    for key, value in config_overrides.items():  # transformers 5 drops unknown config kwargs
        setattr(config, key, value)
    # float32 master weights whatever the checkpoint's storage dtype: transformers 5 otherwise
    # loads a bf16/fp16 checkpoint in that dtype, and AdamW would then update half-precision
    # weights (speed comes from --bf16/--fp16 autocast instead).
    return BertForQuestionAnswering.from_pretrained(path, config=config, dtype=torch.float32)


def load_model_checked(path: str, flag: str, *args, **kwargs) -> BertForQuestionAnswering:
    """``load_model``, with any failure to read the folder as one line naming it."""
    try:
        return load_model(path, *args, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise UsageError(f"{flag} {path}: cannot load the model ({first_line(e)})") from None


def load_student_and_teacher(args, tokenizer, runtime: Runtime):
    teacher = None
    overrides = {}
    if args.teacher_model_name_or_path:
        teacher = load_model_checked(args.teacher_model_name_or_path,
                                     "--teacher_model_name_or_path").to(runtime.device).eval()
        teacher.requires_grad_(False)
        check_same_vocabulary(args, tokenizer, teacher)
        if args.state_loss_ratio > 0:
            # TinyBERT maps student hidden states to the teacher's width with fit_dense.
            from transformers import AutoConfig
            student_config = AutoConfig.from_pretrained(args.config_name or args.model_name_or_path)
            if (student_config.hidden_size != teacher.config.hidden_size
                    or checkpoint_has_fit_dense(args.model_name_or_path)):
                overrides["fit_size"] = teacher.config.hidden_size
    # A resumed run continues from the checkpoint's weights.
    student_path = args.resume_from_checkpoint or args.model_name_or_path
    student_flag = "--resume_from_checkpoint" if args.resume_from_checkpoint else "--model_name_or_path"
    student = load_model_checked(student_path, student_flag, args.config_name, **overrides).to(runtime.device)
    if teacher is not None:
        if args.state_loss_ratio > 0 or args.att_loss_ratio > 0:
            distillation.layers_per_block(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
        if args.att_loss_ratio > 0 and student.config.num_attention_heads != teacher.config.num_attention_heads:
            raise UsageError(f"attention distillation needs equal head counts: student "
                             f"{student.config.num_attention_heads}, teacher {teacher.config.num_attention_heads}")
    return student, teacher


def check_same_vocabulary(args, tokenizer, teacher) -> None:
    from transformers import AutoTokenizer

    teacher_dir = Path(args.teacher_model_name_or_path)
    has_tokenizer = any((teacher_dir / n).is_file() for n in ("tokenizer.json", "vocab.txt"))
    if has_tokenizer:
        teacher_tok = AutoTokenizer.from_pretrained(str(teacher_dir))
        same = utils_squad.tokenizer_fingerprint(teacher_tok) == utils_squad.tokenizer_fingerprint(tokenizer)
    else:
        same = teacher.config.vocab_size == len(tokenizer)
    if not same:
        raise UsageError(f"teacher {teacher_dir} and student {args.model_name_or_path} use different "
                         "vocabularies; distillation needs the same tokenizer")


def feature_cache_dir(args) -> Path:
    """--cache_dir; else the data folder, as the reference, unless it is marked read-only (checked
    on the mode bits: root may write anywhere, but a shared read-only data folder must stay clean);
    else <output_dir>/cached_features."""
    if args.cache_dir:
        return Path(args.cache_dir)
    if args.data_dir and _writable(Path(args.data_dir)):
        return Path(args.data_dir)
    return Path(args.output_dir) / "cached_features"


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def load_features(args, tokenizer, runtime: Runtime, is_training: bool, max_questions: int | None):
    # Rank 0 builds the cache first; the other ranks then read it.
    if not runtime.is_main:
        runtime.barrier()
    result = utils_squad.load_or_build_features(
        args.train_path if is_training else args.predict_path, tokenizer,
        max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
        max_query_length=args.max_query_length, is_training=is_training,
        cache_dir=feature_cache_dir(args), overwrite_cache=args.overwrite_cache and runtime.is_main,
        max_examples=max_questions)
    if runtime.is_main:
        runtime.barrier()
    return result


# --------------------------------------------------------------------------------------------
# Objective: which loss each step trains with
# --------------------------------------------------------------------------------------------

class Objective:
    """The loss of one step for the full model, chosen by the flags, plus the sandwich's
    in-place distillation for sub-models."""

    def __init__(self, args, teacher=None):
        self.args = args
        self.teacher = teacher

    @property
    def needs_hidden_states(self) -> bool:
        return self.args.state_loss_ratio > 0

    @property
    def needs_attention_scores(self) -> bool:
        return self.args.att_loss_ratio > 0 and self.args.attention_loss_input == "scores"

    @property
    def needs_attention_probs(self) -> bool:
        return self.args.att_loss_ratio > 0 and self.args.attention_loss_input == "probabilities"

    def teacher_outputs(self, inputs):
        if self.teacher is None:
            return None
        with torch.no_grad():
            return self.teacher(**inputs, output_hidden_states=self.needs_hidden_states,
                                output_attentions=self.needs_attention_probs,
                                output_attention_scores=self.needs_attention_scores)

    def full_model_loss(self, model, outputs, teacher_out) -> tuple[torch.Tensor, dict]:
        """Loss of the full model, and its named terms for logging."""
        args = self.args
        if teacher_out is None:
            return outputs.loss, {"span_loss": outputs.loss.item()}
        if args.pred_distill:
            loss = distillation.prediction_distillation_loss(
                outputs.start_logits, outputs.end_logits,
                teacher_out.start_logits, teacher_out.end_logits, args.temperature)
            return loss, {"pred_loss": loss.item()}
        terms, loss = {}, 0.0
        if args.state_loss_ratio > 0:
            fit_dense = getattr(unwrap(model), "fit_dense", None)
            rep = distillation.hidden_state_loss(outputs.hidden_states, teacher_out.hidden_states, fit_dense)
            loss = loss + args.state_loss_ratio * rep
            terms["rep_loss"] = rep.item()
        if args.att_loss_ratio > 0:
            if args.attention_loss_input == "scores":
                student_att, teacher_att = outputs.attention_scores, teacher_out.attention_scores
            else:  # Intel's distill(): post-softmax, post-dropout probabilities
                student_att, teacher_att = outputs.attentions, teacher_out.attentions
            att = distillation.attention_loss(student_att, teacher_att, use_mse=args.att_mse)
            loss = loss + args.att_loss_ratio * att
            terms["att_loss"] = att.item()
        return loss, terms

    def sub_model_loss(self, sub_outputs, full_start, full_end) -> torch.Tensor:
        return distillation.inplace_distillation_loss(
            sub_outputs.start_logits, sub_outputs.end_logits, full_start, full_end,
            reference_direction=not self.args.conventional_inplace_kl)


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def sub_models_for_step(args, num_layers: int, rng: random.Random, fixed_length_config):
    """The sub-models one step trains: the full model alone, or the sandwich (step 4)."""
    if args.length_adaptive:
        return length_drop.sandwich_configurations(
            num_layers, args.max_seq_length, args.num_sandwich, args.length_drop_ratio_bound,
            layer_dropout_prob=args.layer_dropout_prob, layer_dropout_bound=args.layer_dropout_bound, rng=rng)
    layer_config = length_drop.sample_layer_configuration(
        num_layers, layer_dropout_prob=args.layer_dropout_prob, layer_dropout=0, rng=rng)
    return [length_drop.SubModel("full", fixed_length_config, layer_config)]


def sandwich_weight(args, index: int, num_models: int) -> float:
    """Weight of model ``index`` (0 = the full model) in one step's loss: 1 without the sandwich;
    the reference's 1 / num_models for each; or ``--sandwich_full_weight`` for the full model and
    the rest shared equally by the sub-models."""
    if not args.length_adaptive:
        return 1.0
    if args.sandwich_full_weight is None:
        return 1.0 / num_models
    if index == 0:
        return args.sandwich_full_weight
    return (1.0 - args.sandwich_full_weight) / (num_models - 1)


def train_step(args, model, objective: Objective, batch, sub_models, scale: float, runtime: Runtime,
               scaler, sync: bool) -> dict:
    """Forward and backward of every sub-model on one batch; gradients accumulate in ``.grad``.

    Each model's loss is weighted by ``sandwich_weight`` (the reference: each of the
    num_sandwich + 2 losses divided by num_sandwich + 2), and all by the gradient-accumulation
    steps (``scale``)."""
    input_ids, attention_mask, token_type_ids, start_positions, end_positions = batch
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                  start_positions=start_positions, end_positions=end_positions)
    with autocast_context(args, runtime.device):
        teacher_out = objective.teacher_outputs(inputs)
    terms = defaultdict(float)
    for i, sub in enumerate(sub_models):
        last = i == len(sub_models) - 1
        # Under DDP, gradients are all-reduced once per optimizer step, on the last backward.
        ctx = model.no_sync() if (runtime.world_size > 1 and not (sync and last)) else contextlib.nullcontext()
        with ctx:
            with autocast_context(args, runtime.device):
                outputs = model(**inputs, length_config=sub.length_config, layer_config=sub.layer_config,
                                output_hidden_states=(i == 0 and objective.needs_hidden_states),
                                output_attentions=(i == 0 and objective.needs_attention_probs),
                                output_attention_scores=(i == 0 and objective.needs_attention_scores))
                if i == 0:
                    loss, step_terms = objective.full_model_loss(model, outputs, teacher_out)
                    full_start, full_end = outputs.start_logits.detach(), outputs.end_logits.detach()
                    for k, v in step_terms.items():
                        terms[k] += v
                else:
                    loss = objective.sub_model_loss(outputs, full_start, full_end)
                    terms[f"{sub.kind}_kl_loss"] += loss.item() / (1 if sub.kind == "smallest" else args.num_sandwich)
            loss = loss * scale * sandwich_weight(args, i, len(sub_models))
            terms["loss"] += loss.item()
            (scaler.scale(loss) if scaler is not None else loss).backward()
    return terms


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

def save_checkpoint(folder: Path, model, tokenizer, args, training_state: dict | None = None) -> None:
    """Write a Hugging Face checkpoint into a temporary folder, then swap it in by renames, so a
    crash never leaves a broken checkpoint at ``folder`` (``recover_checkpoints`` finishes a swap
    cut short). A failed write leaves nothing behind; a full disk is said as such."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        unwrap(model).save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        utils_squad.atomic_write_json(tmp / "training_args.json", args_to_json(args))
        if training_state is not None:
            torch.save(training_state, tmp / TRAINING_STATE)
    except BaseException as err:
        disk_full = utils_squad.is_disk_full(err, folder.parent)  # before the partial copy is freed
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full:
            kept = f"the previous {folder.name} is kept" if folder.exists() else f"no {folder.name} was written"
            raise utils_squad.DiskFullError(f"no space left on {folder.parent} while writing {folder.name}; "
                                            f"{kept}") from err
        raise
    swap_into_place(tmp, folder, old)


def swap_into_place(tmp: Path, folder: Path, old: Path) -> None:
    if folder.exists():
        os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except BaseException:
        if old.exists() and not folder.exists():
            os.replace(old, folder)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


HIDDEN_CHECKPOINT = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_checkpoints(folder: Path) -> None:
    """Finish or undo the checkpoint swaps of processes that died in ``save_checkpoint``.

    A kill between its two renames leaves no ``checkpoint-X`` but ``.checkpoint-X.old-PID`` (the
    previous copy) and ``.checkpoint-X.tmp-PID`` (the new one, complete: the old copy is moved
    aside only after it was written): the new copy is moved into place. Every other leftover is
    an unfinished write or an already replaced copy, and is deleted."""
    if not folder.is_dir():
        return
    leftovers = defaultdict(dict)
    for path in folder.iterdir():
        match = HIDDEN_CHECKPOINT.match(path.name)
        if match and path.is_dir() and not _process_alive(int(match["pid"])):
            leftovers[(match["name"], match["pid"])][match["kind"]] = path
    for (name, _), paths in sorted(leftovers.items()):
        target = folder / name
        # Several processes (torchrun ranks) may recover at once: a vanished path is fine.
        with contextlib.suppress(FileNotFoundError):
            if not target.exists() and "old" in paths:
                os.replace(paths.get("tmp", paths["old"]), target)
                logger.warning("recovered %s from an interrupted checkpoint save", target)
        for path in paths.values():
            if path.exists():
                logger.warning("removing %s, left by an interrupted checkpoint save", path)
                shutil.rmtree(path, ignore_errors=True)


def args_to_json(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if isinstance(v, (str, int, float, bool, type(None), Path, list))}


def rng_state(sandwich_rng: random.Random) -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(map(_jsonable, random.getstate())),
             "sandwich": list(map(_jsonable, sandwich_rng.getstate())),
             "numpy": [torch.from_numpy(np.random.get_state()[1].astype(np.int64))]
             + [float(x) if isinstance(x, float) else int(x) for x in np.random.get_state()[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _jsonable(x):
    return list(x) if isinstance(x, tuple) else x


def restore_rng_state(state: dict, sandwich_rng: random.Random) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    sandwich_rng.setstate((state["sandwich"][0], tuple(state["sandwich"][1]), state["sandwich"][2]))
    keys = state["numpy"][0].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, *state["numpy"][1:]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------
# Training loop (all steps)
# --------------------------------------------------------------------------------------------

def make_optimizer(args, model, num_training_steps: int):
    from transformers import get_linear_schedule_with_warmup

    no_decay = ("bias", "LayerNorm.weight")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if not any(nd in n for nd in no_decay)],
         "weight_decay": args.weight_decay},
        {"params": [p for n, p in params if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, eps=args.adam_epsilon)
    warmup = args.warmup_steps or int(args.warmup_ratio * num_training_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, num_training_steps)
    return optimizer, scheduler


def epoch_batches(dataset, batch_size: int, epoch: int, seed: int, runtime: Runtime):
    """This rank's batches of one epoch, in an order fixed by (seed, epoch) alone, so a resumed
    run sees exactly the batches an uninterrupted run would."""
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(dataset, num_replicas=runtime.world_size, rank=runtime.rank,
                                 shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    indices = torch.tensor(list(sampler))
    for start in range(0, len(indices), batch_size):
        yield dataset[indices[start:start + batch_size]]


def train(args, model, tokenizer, objective: Objective, train_dataset, runtime: Runtime,
          eval_fn, writer) -> dict:
    """One loop for every paper step. ``eval_fn(model, step)`` returns dev results or None."""
    batches_per_epoch = math.ceil(len(train_dataset) / runtime.world_size / args.per_gpu_train_batch_size)
    steps_per_epoch = max(1, batches_per_epoch // args.gradient_accumulation_steps)
    if args.max_steps > 0:
        total_steps = args.max_steps
        num_epochs = math.ceil(args.max_steps / steps_per_epoch)
    else:
        total_steps = int(steps_per_epoch * args.num_train_epochs)
        num_epochs = math.ceil(args.num_train_epochs)
    raw_model = model
    optimizer, scheduler = make_optimizer(args, raw_model, total_steps)
    scaler = torch.amp.GradScaler(runtime.device.type) if args.fp16 else None
    if runtime.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.local_rank] if runtime.device.type == "cuda" else None,
            find_unused_parameters=True)
    sandwich_rng = random.Random(args.seed)
    global_step, best = 0, {"f1": None}
    set_seed(args.seed)
    if args.resume_from_checkpoint:
        state_file = Path(args.resume_from_checkpoint) / TRAINING_STATE
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        global_step = int(state["global_step"])
        best = {"f1": state.get("best_f1")}
        restore_rng_state(state["rng"], sandwich_rng)
        logger.info("resuming from %s at step %d", args.resume_from_checkpoint, global_step)

    def training_state():
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "global_step": global_step, "best_f1": best["f1"], "rng": rng_state(sandwich_rng),
                **({"scaler": scaler.state_dict()} if scaler is not None else {})}

    logger.info("training: %d features, %d epochs, %d optimisation steps, batch %d x %d GPUs x %d accumulation",
                len(train_dataset), num_epochs, total_steps, args.per_gpu_train_batch_size,
                runtime.world_size, args.gradient_accumulation_steps)
    num_layers = raw_model.config.num_hidden_layers
    running = defaultdict(float)
    logged_steps = 0
    last_eval_step = -1
    bar = tqdm(total=total_steps, initial=global_step, desc="train", disable=not runtime.is_main)
    model.train()
    model.zero_grad(set_to_none=True)
    first_epoch, skip_batches = divmod(global_step, steps_per_epoch)
    skip_batches *= args.gradient_accumulation_steps
    for epoch in range(first_epoch, num_epochs):
        for batch_index, batch in enumerate(epoch_batches(train_dataset, args.per_gpu_train_batch_size,
                                                          epoch, args.seed, runtime)):
            if epoch == first_epoch and batch_index < skip_batches:
                continue
            if batch_index >= steps_per_epoch * args.gradient_accumulation_steps:
                break  # an incomplete accumulation at the epoch's end is dropped
            batch = tuple(t.to(runtime.device) for t in batch)
            sub_models = sub_models_for_step(args, num_layers, sandwich_rng, args.length_config_parsed)
            boundary = (batch_index + 1) % args.gradient_accumulation_steps == 0
            terms = train_step(args, model, objective, batch, sub_models,
                               1.0 / args.gradient_accumulation_steps, runtime, scaler, sync=boundary)
            for k, v in terms.items():
                running[k] += v
            if not boundary:
                continue
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), args.max_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            model.zero_grad(set_to_none=True)
            global_step += 1
            logged_steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss'] * args.gradient_accumulation_steps:.3f}")
            if runtime.is_main and args.logging_steps > 0 and global_step % args.logging_steps == 0:
                log_scalars(writer, running, logged_steps, scheduler, global_step)
                running, logged_steps = defaultdict(float), 0
                if args.evaluate_during_training:
                    best = evaluate_and_keep_best(args, model, tokenizer, eval_fn, global_step, best,
                                                  writer, training_state)
                    last_eval_step = global_step
            if args.save_steps > 0 and global_step % args.save_steps == 0:
                if runtime.is_main:
                    save_training_checkpoints(args, model, tokenizer, global_step, training_state())
                runtime.barrier()
            if global_step >= total_steps:
                break
        if global_step >= total_steps:
            break
    bar.close()
    if runtime.is_main:
        if logged_steps:
            log_scalars(writer, running, logged_steps, scheduler, global_step)
        if args.evaluate_during_training and last_eval_step != global_step:
            best = evaluate_and_keep_best(args, model, tokenizer, eval_fn, global_step, best, writer,
                                          training_state)
            last_eval_step = global_step
        save_checkpoint(Path(args.output_dir) / "checkpoint-last", model, tokenizer, args, training_state())
    runtime.barrier()
    return {"global_step": global_step, "best_f1": best["f1"], "last_eval_step": last_eval_step}


def log_scalars(writer, running: dict, steps: int, scheduler, global_step: int) -> None:
    scalars = {k: v / steps for k, v in running.items()}
    scalars["lr"] = scheduler.get_last_lr()[0]
    if writer is not None:
        for k, v in scalars.items():
            writer.add_scalar(f"train/{k}", v, global_step)
    logger.info("[step %d] %s", global_step, " | ".join(f"{k} {v:.4g}" for k, v in sorted(scalars.items())))


def save_training_checkpoints(args, model, tokenizer, global_step: int, state: dict) -> None:
    out = Path(args.output_dir)
    if not args.save_only_best:
        save_checkpoint(out / f"checkpoint-{global_step}", model, tokenizer, args, state)
    save_checkpoint(out / "checkpoint-last", model, tokenizer, args, state)


def evaluate_and_keep_best(args, model, tokenizer, eval_fn, global_step, best, writer, training_state):
    results = eval_fn(unwrap(model), global_step)
    model.train()
    if results is not None and (best["f1"] is None or results["f1"] > best["f1"]):
        best = {"f1": results["f1"], "step": global_step}
        logger.info("best dev F1 so far (%.2f) at step %d: saving checkpoint-best", results["f1"], global_step)
        # training_state() still holds the previous best; this checkpoint is saved for the new one.
        save_checkpoint(Path(args.output_dir) / "checkpoint-best", model, tokenizer, args,
                        {**training_state(), "best_f1": best["f1"]})
    return best


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def predict_logits(args, model, features, device, length_config=None, desc="eval"):
    """Start and end logits [N, L] (float32 numpy) for every feature, at ``length_config``."""
    model.eval()
    dataset = features.eval_dataset()
    n = len(dataset)
    starts = np.empty((n, args.max_seq_length), dtype=np.float32)
    ends = np.empty_like(starts)
    bs = args.per_gpu_eval_batch_size
    for i in tqdm(range(0, n, bs), desc=desc, leave=False, disable=n <= bs):
        input_ids, attention_mask, token_type_ids, _ = (t.to(device) for t in dataset[i:i + bs])
        with autocast_context(args, device):
            out = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        length_config=length_config)
        starts[i:i + bs] = out.start_logits.float().cpu().numpy()
        ends[i:i + bs] = out.end_logits.float().cpu().numpy()
    return starts, ends


class DevEvaluator:
    """Dev-set evaluation at any length configuration: predictions, official EM/F1 and MACs.
    Loads the dev features once, so the search can call it configuration after configuration."""

    def __init__(self, args, tokenizer, runtime: Runtime, max_questions=None):
        self.args = args
        self.device = runtime.device
        self.examples, self.features = load_features(args, tokenizer, runtime, False, max_questions)
        if not self.examples:
            raise UsageError(f"--predict_file {args.predict_path}: no questions to evaluate on")
        self.gold = {ex.qas_id: [a["text"] for a in ex.answers] for ex in self.examples}

    def __call__(self, model, length_config=None, prefix="", write_predictions=True) -> dict:
        args = self.args
        start = time.perf_counter()
        starts, ends = predict_logits(args, model, self.features, self.device, length_config)
        eval_seconds = time.perf_counter() - start
        predictions, nbest = utils_squad.postprocess_predictions(
            self.examples, self.features, starts, ends, args.n_best_size, args.max_answer_length)
        scores = evaluate_answers(self.gold, predictions)
        config = model.config
        full_macs = length_drop.analytic_macs(config, args.max_seq_length)
        macs = length_drop.analytic_macs(config, args.max_seq_length, length_config)
        if write_predictions:
            utils_squad.write_predictions(predictions, nbest, args.output_dir, prefix=prefix)
        return {"exact_match": scores["exact_match"], "f1": scores["f1"],
                "length_config": list(length_config) if length_config is not None else None,
                "macs": macs, "full_macs": full_macs, "macs_ratio": full_macs / macs,
                "eval_seconds": eval_seconds, "questions": len(self.examples),
                "features": len(self.features)}


def record_eval(args, results: dict, step=None, writer=None) -> None:
    """Append to eval_results.json (the latest result, plus the history), and TensorBoard."""
    path = Path(args.output_dir) / "eval_results.json"
    history = []
    if path.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            history = json.loads(path.read_text())["history"]
    entry = dict(results, step=step)
    utils_squad.atomic_write_json(path, {**entry, "history": history + [entry]})
    if writer is not None and step is not None:
        for k in ("exact_match", "f1", "macs", "macs_ratio", "eval_seconds"):
            writer.add_scalar(f"eval/{k}", results[k], step)
    logger.info("eval%s: EM %.2f | F1 %.2f | MACs %.3g (%.2fx fewer) | %d questions | %.1fs",
                f" [step {step}]" if step is not None else "", results["exact_match"], results["f1"],
                results["macs"], results["macs_ratio"], results["questions"], results["eval_seconds"])


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def run(args) -> dict:
    recover_interrupted_saves(args)
    validate_args(args)
    runtime = setup_runtime(args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if runtime.is_main else logging.WARNING, force=True)
    set_seed(args.seed)
    tokenizer = load_tokenizer(args)
    model, teacher = load_student_and_teacher(args, tokenizer, runtime)
    num_layers = model.config.num_hidden_layers
    args.length_config_parsed = None
    if args.length_config is not None:
        try:
            args.length_config_parsed = length_drop.parse_length_config(
                args.length_config, num_layers, args.max_seq_length)
        except ValueError as e:
            raise UsageError(f"--length_config: {e}") from None
    if args.max_seq_length > model.config.max_position_embeddings:
        raise UsageError(f"--max_seq_length {args.max_seq_length} exceeds the model's "
                         f"max_position_embeddings ({model.config.max_position_embeddings})")
    # The output folder is created by the first write into it, so a failed run leaves none.
    runtime.barrier()

    evaluator = None
    if args.do_eval or args.evaluate_during_training:
        evaluator = DevEvaluator(args, tokenizer, runtime, args.max_eval_questions)
    summary = {}
    if args.do_train:
        _, features = load_features(args, tokenizer, runtime, True, args.max_train_questions)
        if len(features) == 0:
            raise UsageError(f"--train_file {args.train_path}: no training questions to learn from")
        writer = make_writer(args) if runtime.is_main else None

        def eval_fn(m, step):
            results = evaluator(m, args.length_config_parsed)
            record_eval(args, results, step, writer)
            summary["last_eval"] = results
            return results

        summary["train"] = train(args, model, tokenizer, Objective(args, teacher), features.train_dataset(),
                                 runtime, eval_fn, writer)
        if writer is not None:
            writer.close()
    if args.do_eval and runtime.is_main:
        trained = summary.get("train", {})
        if trained and trained["last_eval_step"] == trained["global_step"]:
            results = summary["last_eval"]  # the final model was just evaluated (and predictions written)
        else:
            results = evaluator(unwrap(model), args.length_config_parsed)
            record_eval(args, results)
        summary["eval"] = results
        print(json.dumps({k: results[k] for k in ("exact_match", "f1", "macs_ratio")}))
    if args.do_search and runtime.is_main:
        summary["search_csv"] = str(run_search(args, model, tokenizer, runtime))
    if runtime.world_size > 1:
        dist.destroy_process_group()
    return summary


def run_search(args, model, tokenizer, runtime: Runtime) -> Path:
    evaluator = DevEvaluator(args, tokenizer, runtime, args.search_subset)
    model.eval()

    def evaluate_fn(length_config):
        r = evaluator(model, tuple(length_config), write_predictions=False)
        return {k: r[k] for k in ("f1", "exact_match", "macs", "eval_seconds", "questions")}

    full_macs = length_drop.analytic_macs(model.config, args.max_seq_length)
    return search.run_search_from_args(args, evaluate_fn, model.config.num_hidden_layers,
                                       args.max_seq_length, full_macs, args.output_dir,
                                       measured_on=search_measured_on(args, model, tokenizer))


def search_measured_on(args, model, tokenizer) -> dict:
    """What a search row's F1 depends on beyond the search's own settings: rows measured on
    other weights, data or lengths are never reused."""
    return {"weights_sha256": weights_sha256(model),
            "predict_file_sha256": utils_squad.file_sha256(args.predict_path),
            "tokenizer": utils_squad.tokenizer_fingerprint(tokenizer),
            "doc_stride": args.doc_stride, "max_query_length": args.max_query_length,
            "max_answer_length": args.max_answer_length, "n_best_size": args.n_best_size,
            "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
            "count_padding_queries": bool(getattr(model.config, "count_padding_queries", False))}


def weights_sha256(model) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes) of the model searched."""
    digest = hashlib.sha256()
    for name, tensor in sorted(unwrap(model).state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode("utf-8"))
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def recover_interrupted_saves(args) -> None:
    folders = {Path(args.output_dir)}
    if args.resume_from_checkpoint:
        folders.add(Path(args.resume_from_checkpoint).parent)
    for folder in sorted(folders):
        recover_checkpoints(folder)


def make_writer(args):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(Path(args.output_dir) / "runs"))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (UsageError, utils_squad.SquadFormatError, ValueError, search.SigOptError) as e:
        print(f"run_squad.py: error: {e}", file=sys.stderr)
        return 2
    except (utils_squad.DiskFullError, search.StoreError) as e:
        print(f"run_squad.py: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. ENOSPC writing eval_results.json or the predictions
        if not utils_squad.is_disk_full(e, args.output_dir):
            raise
        print(f"run_squad.py: error: no space left on {args.output_dir} ({e}); files already written are "
              "complete", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
