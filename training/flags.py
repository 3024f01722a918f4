"""The command line: every flag of run_squad.py, with the reference's names and defaults.

Parsing only; ``settings.build_settings`` turns the parsed flags into checked settings. Nothing
here imports torch or transformers, so ``--help`` answers at once.

``@FILE`` anywhere on the command line is replaced by the flags in FILE (configs/*.args hold the
paper's steps): one or more shell-quoted words a line, blank lines and ``#`` lines skipped.
"""
from __future__ import annotations

import argparse
import shlex

from search.cli import add_search_args


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every flag's default after its help."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help  # "(default: None)" and "(default: False)" say nothing
        return super()._get_help_string(action)


USAGE = ("%(prog)s [@FILE] --model_name_or_path DIR --output_dir DIR [--do_train] [--do_eval] [--do_search] "
         "[flags below]")


class ArgumentFileParser(argparse.ArgumentParser):
    """Reads ``@FILE`` as ``--flag value`` lines; argparse's default is one word a line."""

    def __init__(self, **kwargs):
        super().__init__(fromfile_prefix_chars="@", **kwargs)

    def convert_arg_line_to_args(self, arg_line: str) -> list[str]:
        line = arg_line.strip()
        if not line or line.startswith("#"):
            return []
        try:
            return shlex.split(line)
        except ValueError as err:  # an unclosed quote: argparse's one-line error, not a traceback
            self.error(f"argument file line {line!r}: {err}")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    p = ArgumentFileParser(description=description, formatter_class=HelpFormatter, usage=USAGE)
    add_model_and_data_args(p.add_argument_group("model and data"))
    add_task_args(p.add_argument_group("what to do"))
    add_optimisation_args(p.add_argument_group("optimisation and runtime"))
    add_distillation_args(p.add_argument_group("distillation (TinyBERT; steps 2-4)"))
    add_length_args(p.add_argument_group("LengthDrop (LAT; step 4 and evaluation)"))
    add_search_args(p)
    return p


def add_model_and_data_args(g) -> None:
    a = g.add_argument
    a("--model_type", default="bert", choices=["bert"], help="only BERT, as in the paper")
    a("--model_name_or_path", required=True, help="local folder of a BERT checkpoint (no model hub here)")
    a("--output_dir", required=True, help="where checkpoints, results and predictions go")
    a("--data_dir", default=None, help="folder with --train_file and --predict_file")
    a("--train_file", default="train-v1.1.json", help="SQuAD 1.1 training file, inside --data_dir unless a path")
    a("--predict_file", default="dev-v1.1.json", help="SQuAD 1.1 dev file, inside --data_dir unless a path")
    a("--config_name", default=None, help="config.json folder if not --model_name_or_path")
    a("--tokenizer_name", default=None, help="tokenizer folder if not --model_name_or_path")
    a("--cache_dir", default=None, help="feature cache folder (default: --data_dir if writable, else --output_dir)")
    a("--overwrite_cache", action="store_true", help="rebuild the feature cache")
    a("--max_seq_length", type=int, default=384, help="tokens per window (question + context)")
    a("--doc_stride", type=int, default=128, help="step between the starts of a long context's windows")
    a("--max_query_length", type=int, default=64, help="question tokens kept")
    a("--n_best_size", type=int, default=20, help="start and end candidates per window")
    a("--max_answer_length", type=int, default=30, help="longest answer, in tokens")
    a("--do_lower_case", action="store_true", help="lower-case input; checked against the tokenizer, which decides")
    a("--max_train_questions", type=int, default=None, help="use only the first N training questions")
    a("--max_eval_questions", type=int, default=None, help="evaluate on the first N dev questions")


def add_task_args(g) -> None:
    a = g.add_argument
    a("--do_train", action="store_true", help="train (the step is chosen by the distillation and length flags)")
    a("--do_eval", action="store_true", help="evaluate the final model on --predict_file")
    a("--evaluate_during_training", action="store_true", help="evaluate every --logging_steps and at the end")
    a("--save_only_best", action="store_true", help="keep checkpoint-best and checkpoint-last, no checkpoint-N")
    a("--save_training_state", default="resume", choices=["resume", "all", "none"],
      help="checkpoints that keep training_state.pt (optimizer, scheduler, RNG; twice the model's size) "
      "for --resume_from_checkpoint: checkpoint-last and checkpoint-N, also checkpoint-best, or none")
    a("--overwrite_output_dir", action="store_true", help="write into a non-empty --output_dir (deletes nothing)")
    a("--resume_from_checkpoint", default=None, help="a checkpoint folder with training_state.pt to continue from")


def add_optimisation_args(g) -> None:
    a = g.add_argument
    a("--per_gpu_train_batch_size", type=int, default=8, help="training batch per process")
    a("--per_gpu_eval_batch_size", type=int, default=8, help="evaluation batch per process")
    a("--learning_rate", type=float, default=5e-5, help="AdamW's peak learning rate")
    a("--gradient_accumulation_steps", type=int, default=1, help="batches per optimisation step")
    a("--weight_decay", type=float, default=0.0, help="AdamW weight decay (not on biases and LayerNorm)")
    a("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon")
    a("--max_grad_norm", type=float, default=1.0, help="gradient clipping norm")
    a("--num_train_epochs", type=float, default=3.0, help="epochs, unless --max_steps is given")
    a("--max_steps", type=int, default=-1, help="optimisation steps; overrides --num_train_epochs when > 0")
    a("--warmup_steps", type=int, default=0, help="linear warm-up steps")
    a("--warmup_ratio", type=float, default=0.0, help="warm-up as a share of all steps (if --warmup_steps is 0)")
    a("--logging_steps", type=int, default=500, help="log (and evaluate during training) every N steps")
    a("--save_steps", type=int, default=500, help="save checkpoint-last (and checkpoint-N) every N steps")
    a("--seed", type=int, default=42, help="seed of weights' initialisation, data order and the sandwich")
    a("--train_padding", default="max_length", choices=["max_length", "longest"],
      help="training batches padded to --max_seq_length (the reference's) or cut to their longest real "
      "sequence, every span softmax then over real tokens only (faster; not with step 2's losses)")
    a("--group_by_length", action="store_true",
      help="training batches of similar length (megabatches of 50 batches sorted by length), so "
      "--train_padding longest cuts more padding")
    a("--no_cuda", action="store_true", help="run on the CPU even when CUDA is available")
    a("--fp16", action="store_true", help="float16 autocast with loss scaling (CUDA)")
    a("--bf16", action="store_true", help="bfloat16 autocast in training; evaluation runs a bfloat16 copy of the weights")
    a("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a("--local_rank", type=int, default=-1, help="set by torch.distributed launchers")


def add_distillation_args(g) -> None:
    a = g.add_argument
    a("--teacher_model_type", default=None, choices=["bert"], help="the teacher's architecture (only bert)")
    a("--teacher_model_name_or_path", default=None, help="local folder of the teacher model")
    a("--state_loss_ratio", type=float, default=0.0, help="weight of the hidden-state loss (step 2)")
    a("--att_loss_ratio", type=float, default=0.0, help="weight of the attention loss (step 2)")
    a("--pred_distill", action="store_true", help="prediction-layer distillation (step 3)")
    a("--att_mse", action="store_true", help="attention MSE; else 1 - cosine (the reference's other form)")
    a("--attention_loss_input", default="scores", choices=["scores", "probabilities"],
      help="what the attention loss compares: pre-softmax scores (TinyBERT) or post-softmax, "
      "post-dropout probabilities (Intel's distill())")
    a("--temperature", type=float, default=1.0, help="softmax temperature of --pred_distill")


def add_length_args(g) -> None:
    a = g.add_argument
    a("--length_config", default=None,
      help="JSON list, one entry per layer: token counts out of --max_seq_length ('[384, 320, 256]') or "
      "keep fractions of each batch's longest sequence ('[1.0, 0.8, 0.6]'); default: full length")
    a("--length_adaptive", action="store_true", help="train with the sandwich rule (step 4)")
    a("--num_sandwich", type=int, default=2, help="random sub-models per step besides the full and smallest")
    a("--length_drop_ratio_bound", type=float, default=0.2, help="share of tokens the smallest sub-model drops per layer")
    a("--smallest_length_config", default=None,
      help="JSON list: the sandwich's smallest sub-model runs at this configuration (keep fractions with "
      "--length_space relative, else token counts) and the random ones are drawn between it and full "
      "length, instead of every layer dropping --length_drop_ratio_bound (an extension: train down to a target)")
    a("--length_space", default="absolute", choices=["absolute", "relative"],
      help="the sandwich's sub-models keep token counts out of --max_seq_length (the paper's) or "
      "fractions of each batch's longest real sequence (short sequences lose tokens too)")
    a("--layer_dropout_prob", type=float, default=None, help="LayerDrop probability per layer (default: none)")
    a("--layer_dropout_bound", type=int, default=0, help="most layers a sub-model skips (LAT: a count)")
    a("--conventional_inplace_kl", action="store_true",
      help="sub-models minimise KL(full || sub) instead of the reference's KL(sub || full)")
    a("--track_length_configs", default=None,
      help="JSON list of length configurations also evaluated at every evaluation during training "
      "(eval_results.json 'tracked', TensorBoard eval_tracked/), e.g. '[[1.0, 0.9, 0.81]]'")
    a("--drop_criterion", default=None, choices=["attention", "learned"],
      help="how a dropping layer ranks tokens: the attention they receive (the paper's) or learned token "
      "scorers on the layer's input (an extension; [CLS], the question and the [SEP]s are never dropped); "
      "recorded in the checkpoint's config. Default: the checkpoint's own (attention for the paper's)")
    a("--token_scorer", default="linear", choices=["linear", "mlp", "bilinear"],
      help="the learned scorers' form when the model has none yet: one linear layer, hidden/4 -> GELU -> 1, "
      "or linear plus a rank-64 product with the question's mean state (bilinear)")
    a("--token_scorer_input", default="layer_input", choices=["layer_input", "attention_output"],
      help="what the learned scorers read when the model has none yet: each layer's input, or its attention "
      "output (the layer then selects after its attention, before its feed-forward block)")
    a("--select_before_attention", action="store_true",
      help="learned criterion: select a layer's tokens before its attention too (fewer attention MACs)")
    a("--train_token_scorers_only", action="store_true",
      help="the fit stage: train only the learned token scorers on a frozen model (minutes on a CPU; the "
      "weights, and so the full-length F1, stay the parent's); give a larger --learning_rate, e.g. 1e-3")
    a("--token_scorer_targets", default="gold", choices=["gold", "soft"],
      help="what the scorers learn: the gold answer's tokens, or the full model's own span distributions "
      "(no labels needed)")
    a("--token_scorer_loss_ratio", type=float, default=None,
      help="weight of the token scorers' loss beside the step's loss when a learned model trains "
      "(default: 1.0 with the learned criterion)")
    a("--sandwich_full_weight", type=float, default=None,
      help="the full model's share of the sandwich loss, in (0, 1]; the sub-models share the rest "
      "equally (default: 1 / (num_sandwich + 2) for every model, the reference's)")
