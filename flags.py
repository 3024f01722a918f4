"""The command line: every flag of run_squad.py, with the reference's names and defaults.

Parsing only; ``settings.build_settings`` turns the parsed flags into checked settings.
"""
from __future__ import annotations

import argparse

import search


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    a("--train_padding", default="max_length", choices=["max_length", "longest"],
      help="training batches padded to --max_seq_length (default, the reference's) or cut to their "
      "longest real sequence, with every span softmax over real tokens only (faster; not with the "
      "hidden-state or attention loss, which average over padded positions)")
    a("--group_by_length", action="store_true",
      help="training batches of features of similar length (transformers' group_by_length: "
      "megabatches of 50 batches sorted by length), so --train_padding longest cuts more padding")
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
    a("--length_space", default="absolute", choices=["absolute", "relative"],
      help="the sandwich's sub-models keep token counts out of --max_seq_length (absolute, the paper's) "
      "or fractions of each batch's longest real sequence (relative: short sequences lose tokens too)")
    a("--layer_dropout_prob", type=float, default=None)
    a("--layer_dropout_bound", type=int, default=0, help="most layers a sub-model skips (LAT: a count)")
    a("--conventional_inplace_kl", action="store_true",
      help="sub-models minimise KL(full || sub) instead of the reference's KL(sub || full)")
    a("--track_length_configs", default=None,
      help="JSON list of length configurations (token counts or keep fractions) also evaluated at "
      "every evaluation during training, e.g. '[[1.0, 0.9, 0.81, 0.73, 0.66, 0.59]]': robustness "
      "curves in eval_results.json ('tracked') and TensorBoard (eval_tracked/)")
    a("--sandwich_full_weight", type=float, default=None,
      help="the full model's share of the sandwich loss, in (0, 1]; the sub-models share the rest "
      "equally (default: the reference's 1 / (num_sandwich + 2) for every model)")
    search.add_search_args(p)
    return p
