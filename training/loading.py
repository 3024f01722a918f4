"""Loading what a training run works on: student and teacher models, SQuAD features (a model
folder alone loads through ``core.models``)."""
from __future__ import annotations

from pathlib import Path

import torch

import utils_squad
from core.errors import UsageError
from core.models import load_model_checked
from training import distillation
from training.runtime import Runtime
from core.checks import read_json_object
from core.files import writable_folder
from training.settings import DataSettings, ModelSettings, ObjectiveSettings


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


def load_student_and_teacher(settings: ModelSettings, objective: ObjectiveSettings, tokenizer,
                             runtime: Runtime):
    teacher = None
    overrides = {}
    if settings.teacher_model_name_or_path:
        teacher = load_model_checked(settings.teacher_model_name_or_path,
                                     "--teacher_model_name_or_path").to(runtime.device).eval()
        teacher.requires_grad_(False)
        check_same_vocabulary(settings, tokenizer, teacher)
        if objective.state_loss_ratio > 0:
            # TinyBERT maps student hidden states to the teacher's width with fit_dense.
            from transformers import AutoConfig
            student_config = AutoConfig.from_pretrained(settings.config_name or settings.model_name_or_path)
            if (student_config.hidden_size != teacher.config.hidden_size
                    or checkpoint_has_fit_dense(settings.model_name_or_path)):
                overrides["fit_size"] = teacher.config.hidden_size
    student = load_model_checked(settings.student_path, settings.student_flag, settings.config_name,
                                 fresh_token_scorers=fits_scorers_of_another_form(settings, objective),
                                 **overrides, **settings.config_overrides).to(runtime.device)
    if objective.train_token_scorers_only:  # the fit stage: only the scorers learn
        student.requires_grad_(False)
        student.bert.encoder.token_scorers.requires_grad_(True)
    if teacher is not None:
        check_teacher_fits(objective, student, teacher)
    return student, teacher


def fits_scorers_of_another_form(settings: ModelSettings, objective: ObjectiveSettings) -> bool:
    """The fit stage asking for scorers of another kind or input than the checkpoint's own: they
    start untrained (elsewhere such a checkpoint is refused when it loads)."""
    if not objective.train_token_scorers_only:
        return False
    saved = read_json_object(Path(settings.student_path) / "config.json", settings.student_flag)
    asked = settings.config_overrides
    return any(asked.get(name, default) != (saved.get(name) or default)
               for name, default in (("token_scorer", "linear"), ("token_scorer_input", "layer_input")))


def check_teacher_fits(objective: ObjectiveSettings, student, teacher) -> None:
    """Intermediate-layer distillation needs matching layer counts and head counts."""
    if objective.state_loss_ratio > 0 or objective.att_loss_ratio > 0:
        distillation.layers_per_block(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    if objective.att_loss_ratio > 0 and student.config.num_attention_heads != teacher.config.num_attention_heads:
        raise UsageError(f"attention distillation needs equal head counts: student "
                         f"{student.config.num_attention_heads}, teacher {teacher.config.num_attention_heads}")


def check_same_vocabulary(settings: ModelSettings, tokenizer, teacher) -> None:
    from transformers import AutoTokenizer

    teacher_dir = Path(settings.teacher_model_name_or_path)
    has_tokenizer = any((teacher_dir / n).is_file() for n in ("tokenizer.json", "vocab.txt"))
    if has_tokenizer:
        teacher_tok = AutoTokenizer.from_pretrained(str(teacher_dir))
        same = utils_squad.tokenizer_fingerprint(teacher_tok) == utils_squad.tokenizer_fingerprint(tokenizer)
    else:
        same = teacher.config.vocab_size == len(tokenizer)
    if not same:
        raise UsageError(f"teacher {teacher_dir} and student {settings.model_name_or_path} use different "
                         "vocabularies; distillation needs the same tokenizer")


def feature_cache_dir(settings: DataSettings) -> Path:
    """--cache_dir; else the data folder, as the reference, unless it is marked read-only (checked
    on the mode bits: root may write anywhere, but a shared read-only data folder must stay clean);
    else <output_dir>/cached_features."""
    if settings.cache_dir:
        return Path(settings.cache_dir)
    if settings.data_dir and writable_folder(Path(settings.data_dir)):
        return Path(settings.data_dir)
    return Path(settings.output_dir) / "cached_features"


def load_features(settings: DataSettings, tokenizer, runtime: Runtime, is_training: bool,
                  max_questions: int | None):
    # Rank 0 builds the cache first; the other ranks then read it.
    if not runtime.is_main:
        runtime.barrier()
    result = utils_squad.load_or_build_features(
        settings.train_path if is_training else settings.predict_path, tokenizer,
        max_seq_length=settings.max_seq_length, doc_stride=settings.doc_stride,
        max_query_length=settings.max_query_length, is_training=is_training,
        cache_dir=feature_cache_dir(settings), overwrite_cache=settings.overwrite_cache and runtime.is_main,
        max_examples=max_questions)
    if runtime.is_main:
        runtime.barrier()
    return result
