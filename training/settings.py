"""Typed, frozen settings built from the parsed flags, and every check that can fail on them.

``build_settings(namespace)`` runs all checks before any model or data loads (it reads only
``config.json`` files and file headers) and returns a ``Settings`` whose groups are handed to the
parts that need them: ``ModelSettings`` to loading, ``DataSettings`` to the features,
``ObjectiveSettings`` and ``SandwichSettings`` to the loss, ``TrainSettings`` to the training
loop, ``EvalSettings`` to evaluation, ``RuntimeSettings`` to the device, ``SearchSettings`` to
the search. Field names are the flags' names, so a message can name the flag.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, fields
from pathlib import Path

import length_drop
import search
from core.checks import (check_model_folder, check_threads, check_tokenizer_folder, check_window_flags,
                         checked_length_config, read_json_object)
from core.errors import UsageError, first_line
from core.files import check_output_dir, check_output_file

TRAINING_STATE = "training_state.pt"


@dataclass(frozen=True)
class ModelSettings:
    model_name_or_path: str
    config_name: str | None
    tokenizer_name: str | None
    do_lower_case: bool
    teacher_model_name_or_path: str | None
    resume_from_checkpoint: str | None
    length_config: tuple[int, ...] | None  # parsed --length_config; None: full length
    drop_criterion: str | None             # "attention" or "learned"; None: the checkpoint's own
    token_scorer: str                      # the learned scorers' form, for a model without them yet
    token_scorer_input: str                # what they read ("layer_input" or "attention_output")
    select_before_attention: bool

    @property
    def config_overrides(self) -> dict:
        """What the student's config.json is changed by: the drop criterion and its options."""
        overrides = {} if self.drop_criterion is None else {"drop_criterion": self.drop_criterion}
        if self.drop_criterion == "learned":
            overrides["token_scorer"] = self.token_scorer
            if self.token_scorer_input != "layer_input":
                overrides["token_scorer_input"] = self.token_scorer_input
        if self.select_before_attention:
            overrides["select_before_attention"] = True
        return overrides

    @property
    def student_path(self) -> str:
        """A resumed run continues from the checkpoint's weights."""
        return self.resume_from_checkpoint or self.model_name_or_path

    @property
    def student_flag(self) -> str:
        return "--resume_from_checkpoint" if self.resume_from_checkpoint else "--model_name_or_path"

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer_name or self.model_name_or_path


@dataclass(frozen=True)
class DataSettings:
    data_dir: str | None
    train_path: Path | None    # resolved --train_file; None unless training
    predict_path: Path | None  # resolved --predict_file; None unless evaluating or searching
    cache_dir: str | None
    overwrite_cache: bool
    output_dir: str            # the feature cache's last resort
    max_seq_length: int
    doc_stride: int
    max_query_length: int
    max_train_questions: int | None
    max_eval_questions: int | None


@dataclass(frozen=True)
class ObjectiveSettings:
    state_loss_ratio: float
    att_loss_ratio: float
    pred_distill: bool
    att_mse: bool
    attention_loss_input: str
    temperature: float
    conventional_inplace_kl: bool
    train_token_scorers_only: bool = False  # the fit stage: the backbone frozen
    token_scorer_targets: str = "gold"      # "gold" span or the full model's own "soft" span distributions
    token_scorer_loss_ratio: float | None = None  # the scorers' loss weight (None or 0: none)

    @property
    def distilling(self) -> bool:
        return self.pred_distill or self.state_loss_ratio > 0 or self.att_loss_ratio > 0


@dataclass(frozen=True)
class SandwichSettings:
    length_adaptive: bool
    num_sandwich: int
    length_drop_ratio_bound: float
    length_space: str                      # "absolute" or "relative" sub-model configurations
    layer_dropout_prob: float | None
    layer_dropout_bound: int
    sandwich_full_weight: float | None
    max_seq_length: int
    length_config: tuple[int, ...] | None  # the full model's fixed configuration without the sandwich
    smallest_length_config: tuple | None = None  # the sandwich's smallest sub-model (None: the drop-ratio bound's)


@dataclass(frozen=True)
class TrainSettings:
    output_dir: str
    per_gpu_train_batch_size: int
    learning_rate: float
    gradient_accumulation_steps: int
    weight_decay: float
    adam_epsilon: float
    max_grad_norm: float
    num_train_epochs: float
    max_steps: int
    warmup_steps: int
    warmup_ratio: float
    logging_steps: int
    save_steps: int
    seed: int
    evaluate_during_training: bool
    save_only_best: bool
    save_training_state: str  # which checkpoints keep training_state.pt: "resume", "all" or "none"
    resume_from_checkpoint: str | None
    precision: str
    train_padding: str        # "max_length" (the reference's) or "longest"
    group_by_length: bool
    track_length_configs: tuple = ()  # configurations evaluated beside the model's at each evaluation


@dataclass(frozen=True)
class EvalSettings:
    output_dir: str
    per_gpu_eval_batch_size: int
    max_seq_length: int
    n_best_size: int
    max_answer_length: int
    precision: str  # "fp32", "bf16" (a bfloat16 copy of the weights) or "fp16" (autocast)


@dataclass(frozen=True)
class RuntimeSettings:
    no_cuda: bool
    threads: int | None
    local_rank: int
    seed: int


@dataclass(frozen=True)
class SearchSettings:
    """The search flags (``search.add_search_args``), under their own names."""
    search_backend: str | None
    search_budget: int
    search_min_length: int
    search_objective: str
    search_length_space: str           # "absolute" (token counts) or "relative" (keep fractions)
    search_min_fraction: float
    search_fraction_step: float
    search_batching: str | None        # None: padded for absolute, sorted for relative
    search_menu: str | None            # None: <model folder>/length_configs.json
    search_subset: int | None
    search_storage: str | None
    search_study_name: str | None
    search_heartbeat: int              # seconds between an Optuna trial's heartbeats
    search_restart: bool
    search_seed: int
    search_retime_repeats: int         # interleaved re-timing of the front before the menu (sorted batches)
    search_rates: str
    sigopt_parallel_bandwidth: int
    sigopt_experiment_id: str | None
    sigopt_project: str | None
    evo_iter: int
    population_size: int
    mutation_size: int
    mutation_prob: float
    crossover_size: int


@dataclass(frozen=True)
class Settings:
    do_train: bool
    do_eval: bool
    do_search: bool
    output_dir: str
    model: ModelSettings
    data: DataSettings
    objective: ObjectiveSettings
    sandwich: SandwichSettings
    train: TrainSettings
    eval: EvalSettings
    runtime: RuntimeSettings
    search: SearchSettings
    training_args: dict  # what checkpoints record in training_args.json

    @property
    def evaluates(self) -> bool:
        return self.do_eval or self.train.evaluate_during_training


def group_from(cls, namespace: argparse.Namespace, **overrides):
    """An instance of the dataclass ``cls`` from the flags of the same names."""
    values = {f.name: getattr(namespace, f.name) for f in fields(cls) if f.name not in overrides}
    return cls(**values, **overrides)


def precision_of(args: argparse.Namespace) -> str:
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


# --------------------------------------------------------------------------------------------
# Building: every check first, then the groups
# --------------------------------------------------------------------------------------------

def build_settings(args: argparse.Namespace) -> Settings:
    """Check the parsed flags (and the files they name) and build the settings; raises
    ``UsageError`` with one line naming the flag or file."""
    check_flags(args)
    train_path = resolve_data_file(args, args.train_file) if args.do_train else None
    predict_path = (resolve_data_file(args, args.predict_file)
                    if args.do_eval or args.evaluate_during_training or args.do_search else None)
    model_shape = read_model_shape(args)
    criterion = check_drop_criterion_flags(args, model_shape.get("drop_criterion", "attention"))
    length_config = checked_length_config(args.length_config, model_shape["num_hidden_layers"], args.max_seq_length)
    check_window_flags(args.max_seq_length, args.doc_stride, args.max_query_length, args.n_best_size,
                       args.max_answer_length, model_shape["max_position_embeddings"])
    search_settings = group_from(SearchSettings, args)
    if args.do_search:
        search.validate_args(search_settings, model_shape["num_hidden_layers"], args.max_seq_length)
        if args.search_menu is not None:  # written at the search's end: checked before it starts
            check_output_file(args.search_menu, "--search_menu", inputs=(predict_path,))
    precision = precision_of(args)
    training_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if isinstance(v, (str, int, float, bool, type(None), Path, list))}
    training_args.update({k: str(v) for k, v in (("train_path", train_path), ("predict_path", predict_path))
                          if v is not None})
    return Settings(
        do_train=args.do_train, do_eval=args.do_eval, do_search=args.do_search, output_dir=args.output_dir,
        model=group_from(ModelSettings, args, length_config=length_config),
        data=group_from(DataSettings, args, train_path=train_path, predict_path=predict_path),
        objective=group_from(ObjectiveSettings, args, token_scorer_loss_ratio=(
            (1.0 if args.token_scorer_loss_ratio is None else args.token_scorer_loss_ratio)
            if criterion == "learned" and args.do_train else None)),
        sandwich=group_from(SandwichSettings, args, length_config=length_config,
                            smallest_length_config=checked_smallest_length_config(args, model_shape["num_hidden_layers"])),
        train=group_from(TrainSettings, args, precision=precision, train_padding=check_train_padding(args),
                         track_length_configs=parse_track_length_configs(args, model_shape["num_hidden_layers"])),
        eval=group_from(EvalSettings, args, precision=precision),
        runtime=group_from(RuntimeSettings, args),
        search=search_settings,
        training_args=training_args)


def check_train_padding(args) -> str:
    """--train_padding longest changes only the span softmaxes (real tokens only); the step-2
    losses average over padded positions, so there it would change the loss's scale."""
    if args.train_padding == "longest" and (args.state_loss_ratio > 0 or args.att_loss_ratio > 0):
        raise UsageError("--train_padding longest: the hidden-state and attention losses average over "
                         "padded positions; give --train_padding max_length with them")
    return args.train_padding


def parse_track_length_configs(args, num_hidden_layers: int) -> tuple:
    """--track_length_configs: a JSON list of configurations, each checked as --length_config is."""
    if args.track_length_configs is None:
        return ()
    if not (args.evaluate_during_training and args.do_train):
        raise UsageError("--track_length_configs is evaluated during training: it needs --do_train "
                         "--evaluate_during_training")
    try:
        value = json.loads(args.track_length_configs)
    except ValueError as e:
        raise UsageError(f"--track_length_configs: not JSON ({e}); expected a list of configurations, "
                         "e.g. '[[1.0, 0.9, 0.81]]'") from None
    if not isinstance(value, list) or not value:
        raise UsageError("--track_length_configs: expected a non-empty JSON list of configurations")
    configs = []
    for index, config in enumerate(value):
        try:
            configs.append(length_drop.parse_length_config(config, num_hidden_layers, args.max_seq_length))
        except ValueError as e:
            raise UsageError(f"--track_length_configs entry {index}: {e}") from None
    return tuple(configs)


def checked_smallest_length_config(args, num_hidden_layers: int) -> tuple | None:
    """--smallest_length_config: the sandwich's smallest sub-model, in the space its sub-models
    are drawn in (keep fractions for --length_space relative, token counts for absolute)."""
    if args.smallest_length_config is None:
        return None
    if not (args.length_adaptive and args.do_train):
        raise UsageError("--smallest_length_config chooses the sandwich's smallest sub-model: it needs "
                         "--do_train --length_adaptive")
    if args.layer_dropout_prob is not None or args.layer_dropout_bound:
        raise UsageError("--smallest_length_config draws sub-models over every layer: leave out "
                         "--layer_dropout_prob / --layer_dropout_bound")
    try:
        config = length_drop.parse_length_config(args.smallest_length_config, num_hidden_layers,
                                                 args.max_seq_length)
    except ValueError as e:
        raise UsageError(f"--smallest_length_config: {e}") from None
    relative = args.length_space == "relative"
    if length_drop.is_relative(config) != relative:
        want = "keep fractions, e.g. [1.0, 0.7, 0.5]" if relative else "token counts, e.g. [256, 180, 128]"
        raise UsageError(f"--smallest_length_config {args.smallest_length_config}: --length_space "
                         f"{args.length_space} draws sub-models as {want.split(',')[0]}; give {want}")
    return config


def resolve_data_file(args, name: str) -> Path:
    path = Path(name)
    if not path.is_file() and args.data_dir is not None:
        path = Path(args.data_dir) / name
    return path


def check_flags(args) -> None:
    """Every check that needs no model config, in the order the messages have always come."""
    if not (args.do_train or args.do_eval or args.do_search):
        raise UsageError("nothing to do: give --do_train, --do_eval or --do_search")
    if not Path(args.model_name_or_path).is_dir():
        raise UsageError(f"--model_name_or_path {args.model_name_or_path}: no such model folder "
                         "(models load from local folders; no model hub is reachable)")
    check_output_dir(Path(args.output_dir))
    check_model_folder(Path(args.model_name_or_path), "--model_name_or_path")
    check_size_flags(args)
    check_data_files(args)
    check_teacher(args)
    check_step_flags(args)
    check_numbers(args)
    check_output_contents(args)


def check_data_files(args) -> None:
    if args.do_train:
        train_path = resolve_data_file(args, args.train_file)
        if not train_path.is_file():
            raise UsageError(f"--train_file: {train_path} does not exist")
    if args.do_eval or args.evaluate_during_training or args.do_search:
        predict_path = resolve_data_file(args, args.predict_file)
        if not predict_path.is_file():
            raise UsageError(f"--predict_file: {predict_path} does not exist")


def check_teacher(args) -> None:
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


def check_step_flags(args) -> None:
    """Flags of different paper steps that cannot be combined."""
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
        check_resume(args)
    if args.fp16 and args.bf16:
        raise UsageError("give at most one of --fp16 and --bf16")


# The flags a resumed run cannot honour, so one rule for all: each must be what the checkpoint was
# trained with (its training_args.json). Its training_state.pt restores the optimizer's and schedule's
# hyperparameters with their state (--learning_rate, --weight_decay, --adam_epsilon), and its step
# count stands for batches of a data order and size (--seed, --per_gpu_train_batch_size,
# --gradient_accumulation_steps, --group_by_length). Every other flag applies to the resumed run
# and is recorded in its training_args.json (--max_steps, --num_train_epochs, the losses, ...).
RESUME_FIXED_FLAGS = ("learning_rate", "weight_decay", "adam_epsilon", "seed", "per_gpu_train_batch_size",
                      "gradient_accumulation_steps", "group_by_length")


def check_resume(args) -> None:
    """The checkpoint's training_state.pt whole and its flags the ones RESUME_FIXED_FLAGS names,
    before any work."""
    from training.checkpoints import load_training_state  # torch: only when resuming

    folder = Path(args.resume_from_checkpoint)
    recorded_path = folder / "training_args.json"
    if not recorded_path.is_file():
        raise UsageError(f"--resume_from_checkpoint {folder}: no training_args.json there (the flags it was "
                         "trained with; every checkpoint of this script's training has one)")
    recorded = read_json_object(recorded_path, "--resume_from_checkpoint")
    load_training_state(folder, mmap=True)
    if not args.do_train:
        return
    for name in RESUME_FIXED_FLAGS:
        if name in recorded and recorded[name] != getattr(args, name):
            raise UsageError(f"--{name} {json.dumps(getattr(args, name))}: --resume_from_checkpoint {folder} was "
                             f"trained with {json.dumps(recorded[name])}, which its {TRAINING_STATE} keeps; resume "
                             f"with that value, or start a new run from its weights with --model_name_or_path "
                             f"{folder}")


def check_numbers(args) -> None:
    for flag in ("per_gpu_train_batch_size", "per_gpu_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be at least 1")
    check_threads(args.threads)
    if args.temperature <= 0:
        raise UsageError("--temperature must be positive")
    for flag in ("state_loss_ratio", "att_loss_ratio"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag} must be >= 0 (0 turns the loss off), got {getattr(args, flag)}")
    if args.length_space != "absolute" and not args.length_adaptive:
        raise UsageError(f"--length_space {args.length_space} chooses the sandwich's sub-models: it needs "
                         "--length_adaptive")
    if args.sandwich_full_weight is not None:
        if not args.length_adaptive:
            raise UsageError("--sandwich_full_weight weights the sandwich: it needs --length_adaptive")
        if not 0 < args.sandwich_full_weight <= 1:
            raise UsageError(f"--sandwich_full_weight must be in (0, 1], got {args.sandwich_full_weight}")


# --------------------------------------------------------------------------------------------
# The windowing, answer and runtime flags run_squad.py and inference.py share: one rule for both
# --------------------------------------------------------------------------------------------



def check_output_contents(args) -> None:
    """Never write over another run's files without --overwrite_output_dir."""
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


def read_model_shape(args) -> dict:
    """The student's layer count and position limit, from its configuration alone (the weights
    load later), so the length and search flags are checked before anything loads; its tokenizer
    folder is checked against the configuration's vocabulary."""
    from transformers import AutoConfig

    path = args.resume_from_checkpoint or args.model_name_or_path
    flag = "--resume_from_checkpoint" if args.resume_from_checkpoint else "--model_name_or_path"
    try:
        config = AutoConfig.from_pretrained(args.config_name or path)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise UsageError(f"{flag} {path}: cannot load the model ({first_line(e)})") from None
    # the tokenizer's files, and its ids against the embeddings (the check inference.py makes)
    check_tokenizer_folder(args.tokenizer_name or args.model_name_or_path,
                           "--tokenizer_name" if args.tokenizer_name else "--model_name_or_path", config.vocab_size)
    return {"num_hidden_layers": config.num_hidden_layers,
            "max_position_embeddings": config.max_position_embeddings,
            "drop_criterion": getattr(config, "drop_criterion", None) or "attention"}


def check_drop_criterion_flags(args, checkpoint_criterion: str) -> str:
    """The drop criterion the student runs with (the flag, else the checkpoint's), with the flags
    that need the learned one."""
    criterion = args.drop_criterion or checkpoint_criterion
    if criterion != "learned":
        for flag in ("select_before_attention", "train_token_scorers_only", "token_scorer_loss_ratio"):
            if getattr(args, flag) not in (None, False):
                raise UsageError(f"--{flag} needs the learned drop criterion: give --drop_criterion learned "
                                 f"(the model's is {criterion!r})")
    if args.train_token_scorers_only:
        if not args.do_train:
            raise UsageError("--train_token_scorers_only trains: give --do_train")
        if args.teacher_model_name_or_path or args.length_adaptive:
            raise UsageError("--train_token_scorers_only fits the scorers on a frozen model: drop "
                             "--teacher_model_name_or_path / --length_adaptive (the backbone does not train)")
    if args.token_scorer_input != "layer_input":
        if criterion != "learned":
            raise UsageError(f"--token_scorer_input {args.token_scorer_input} needs the learned drop criterion: give "
                             f"--drop_criterion learned (the model's is {criterion!r})")
        if args.select_before_attention:
            raise UsageError("--token_scorer_input attention_output cannot go with --select_before_attention "
                             "(selecting before the attention leaves no attention output to score)")
    if args.token_scorer_loss_ratio is not None and not args.token_scorer_loss_ratio >= 0:
        raise UsageError(f"--token_scorer_loss_ratio must be >= 0, got {args.token_scorer_loss_ratio}")
    return criterion
