"""One training loop for every paper step: batches, the sandwich's forward/backward passes,
optimizer and schedule, logging, evaluation during training, checkpoints, resumption."""
from __future__ import annotations

import contextlib
import logging
import math
import random
from collections import defaultdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from core.errors import UsageError, first_line
from training.checkpoints import (keeps_training_state, load_training_state, restore_rng_state, rng_state,
                                  save_checkpoint, unwrap)
from training.objective import Objective, sandwich_weight, sub_models_for_step
from core.forward import autocast_context
from training.runtime import Runtime, set_seed
from training.settings import TRAINING_STATE, SandwichSettings, TrainSettings

logger = logging.getLogger("run_squad")


def train_step(precision: str, sandwich: SandwichSettings, model, objective: Objective, batch, sub_models,
               scale: float, runtime: Runtime, scaler, sync: bool) -> dict:
    """Forward and backward of every sub-model on one batch; gradients accumulate in ``.grad``.

    Each model's loss is weighted by ``sandwich_weight`` (the reference: each of the
    num_sandwich + 2 losses divided by num_sandwich + 2), and all by the gradient-accumulation
    steps (``scale``)."""
    input_ids, attention_mask, token_type_ids, start_positions, end_positions = batch
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                  start_positions=start_positions, end_positions=end_positions)
    with autocast_context(precision, runtime.device):
        teacher_out = objective.teacher_outputs(inputs)
    terms = defaultdict(float)
    for i, sub in enumerate(sub_models):
        last = i == len(sub_models) - 1
        # Under DDP, gradients are all-reduced once per optimizer step, on the last backward.
        ctx = model.no_sync() if (runtime.world_size > 1 and not (sync and last)) else contextlib.nullcontext()
        with ctx:
            with autocast_context(precision, runtime.device):
                outputs = model(**inputs, length_config=sub.length_config, layer_config=sub.layer_config,
                                output_hidden_states=(i == 0 and objective.needs_hidden_states),
                                output_scorer_states=(i == 0 and objective.trains_token_scorers),
                                output_attentions=(i == 0 and objective.needs_attention_probs),
                                output_attention_scores=(i == 0 and objective.needs_attention_scores))
                outputs = objective.span_outputs(outputs, inputs)
                if i == 0:
                    loss, step_terms = objective.full_model_loss(model, outputs, teacher_out, inputs)
                    full_start, full_end = outputs.start_logits.detach(), outputs.end_logits.detach()
                    for k, v in step_terms.items():
                        terms[k] += v
                else:
                    loss = objective.sub_model_loss(outputs, full_start, full_end)
                    share = 1 if sub.kind == "smallest" else sandwich.num_sandwich
                    terms[f"{sub.kind}_kl_loss"] += loss.item() / share
            loss = loss * scale * sandwich_weight(sandwich, i, len(sub_models))
            terms["loss"] += loss.item()
            (scaler.scale(loss) if scaler is not None else loss).backward()
    return terms


def train_mode(model, objective: Objective) -> None:
    """Training mode; in the fit stage the frozen backbone runs as at inference (no dropout), so
    the scorers learn the hidden states they will rank."""
    model.train()
    if objective.settings.train_token_scorers_only:
        unwrap(model).bert.eval()


def make_optimizer(settings: TrainSettings, model, num_training_steps: int):
    from transformers import get_linear_schedule_with_warmup

    no_decay = ("bias", "LayerNorm.weight")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if not any(nd in n for nd in no_decay)],
         "weight_decay": settings.weight_decay},
        {"params": [p for n, p in params if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=settings.learning_rate, eps=settings.adam_epsilon)
    warmup = settings.warmup_steps or int(settings.warmup_ratio * num_training_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, num_training_steps)
    return optimizer, scheduler


# transformers' group_by_length: features are sorted by length within megabatches of this many
# batches, so batches hold similar lengths while the epoch's order stays random.
MEGABATCH_BATCHES = 50


def epoch_batches(dataset, settings: TrainSettings, epoch: int, runtime: Runtime):
    """This rank's batches of one epoch, in an order fixed by (seed, epoch) alone, so a resumed
    run sees exactly the batches an uninterrupted run would. ``--group_by_length`` groups
    similar lengths; ``--train_padding longest`` cuts each batch to its longest real sequence."""
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(dataset, num_replicas=runtime.world_size, rank=runtime.rank,
                                 shuffle=True, seed=settings.seed)
    sampler.set_epoch(epoch)
    indices = torch.tensor(list(sampler))
    batch_size = settings.per_gpu_train_batch_size
    batches = list(indices.split(batch_size))
    if settings.group_by_length:
        lengths = dataset.tensors[1].sum(1)  # the attention mask's real tokens
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
        batches = length_grouped_batches(indices, lengths, batch_size, generator)
    for batch in batches:
        tensors = dataset[batch]
        yield trim_to_longest(tensors) if settings.train_padding == "longest" else tensors


def length_grouped_batches(indices: torch.Tensor, lengths: torch.Tensor, batch_size: int,
                           generator: torch.Generator) -> list[torch.Tensor]:
    """``indices`` (already shuffled) cut into megabatches, each sorted by length (longest first)
    and split into batches; the batches' order is then shuffled with ``generator``. Every index
    appears exactly once; a short last batch stays last (the loop drops incomplete accumulations)."""
    batches = []
    for mega in indices.split(batch_size * MEGABATCH_BATCHES):
        order = torch.argsort(-lengths[mega], stable=True)
        batches.extend(mega[order].split(batch_size))
    full = [b for b in batches if len(b) == batch_size]
    short = [b for b in batches if len(b) < batch_size]
    return [full[i] for i in torch.randperm(len(full), generator=generator).tolist()] + short


def trim_to_longest(batch: tuple) -> tuple:
    """(input_ids, attention_mask, token_type_ids, starts, ends) cut to the longest real sequence."""
    input_ids, attention_mask, token_type_ids, *positions = batch
    width = max(1, int(attention_mask.sum(1).max()))
    return (input_ids[:, :width], attention_mask[:, :width], token_type_ids[:, :width], *positions)


def schedule_length(settings: TrainSettings, num_features: int, world_size: int) -> tuple[int, int, int]:
    """(optimisation steps per epoch, total steps, epochs)."""
    batches_per_epoch = math.ceil(num_features / world_size / settings.per_gpu_train_batch_size)
    steps_per_epoch = max(1, batches_per_epoch // settings.gradient_accumulation_steps)
    if settings.max_steps > 0:
        return steps_per_epoch, settings.max_steps, math.ceil(settings.max_steps / steps_per_epoch)
    return (steps_per_epoch, int(steps_per_epoch * settings.num_train_epochs),
            math.ceil(settings.num_train_epochs))


def resume_training_state(path: str, optimizer, scheduler, scaler, sandwich_rng) -> tuple[int, dict]:
    """Load optimizer, scheduler, scaler and RNG states saved in checkpoint ``path``; returns
    (global step, best so far)."""
    state = load_training_state(path)  # checked before any work too (settings.check_resume)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError) as err:
        raise UsageError(f"--resume_from_checkpoint: {Path(path) / TRAINING_STATE} does not fit this model's "
                         f"optimizer ({first_line(err)})") from None
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"], sandwich_rng)
    logger.info("resuming from %s at step %d", path, int(state["global_step"]))
    return int(state["global_step"]), {"f1": state.get("best_f1")}


# One function on purpose: the loop's counters (step, best, running sums) are shared by logging,
# evaluation and checkpoints, and reading it top to bottom is how a resumption is checked.
def train(settings: TrainSettings, sandwich: SandwichSettings, training_args: dict, model, tokenizer,
          objective: Objective, train_dataset, runtime: Runtime, eval_fn, writer) -> dict:
    """One loop for every paper step. ``eval_fn(model, step)`` returns dev results or None."""
    steps_per_epoch, total_steps, num_epochs = schedule_length(settings, len(train_dataset), runtime.world_size)
    raw_model = model
    optimizer, scheduler = make_optimizer(settings, raw_model, total_steps)
    scaler = torch.amp.GradScaler(runtime.device.type) if settings.precision == "fp16" else None
    if runtime.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.local_rank] if runtime.device.type == "cuda" else None,
            find_unused_parameters=True)
    sandwich_rng = random.Random(settings.seed)
    global_step, best = 0, {"f1": None}
    set_seed(settings.seed)
    if settings.resume_from_checkpoint:
        global_step, best = resume_training_state(settings.resume_from_checkpoint, optimizer, scheduler,
                                                  scaler, sandwich_rng)

    def training_state():
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "global_step": global_step, "best_f1": best["f1"], "rng": rng_state(sandwich_rng),
                **({"scaler": scaler.state_dict()} if scaler is not None else {})}

    def save(name: str, state: dict) -> None:
        save_checkpoint(Path(settings.output_dir) / name, model, tokenizer, training_args, state,
                        keep_training_state=keeps_training_state(settings.save_training_state, name))

    accumulation = settings.gradient_accumulation_steps
    logger.info("training: %d features, %d epochs, %d optimisation steps, batch %d x %d processes x %d "
                "accumulation, on %s, padded to %s%s", len(train_dataset), num_epochs, total_steps,
                settings.per_gpu_train_batch_size, runtime.world_size, accumulation, runtime.device.type,
                settings.train_padding, ", grouped by length" if settings.group_by_length else "")
    num_layers = raw_model.config.num_hidden_layers
    running = defaultdict(float)
    logged_steps = 0
    last_eval_step = -1
    bar = tqdm(total=total_steps, initial=global_step, desc="train", disable=not runtime.is_main)
    train_mode(model, objective)
    model.zero_grad(set_to_none=True)
    first_epoch, skip_batches = divmod(global_step, steps_per_epoch)
    skip_batches *= accumulation
    for epoch in range(first_epoch, num_epochs):
        for batch_index, batch in enumerate(epoch_batches(train_dataset, settings, epoch, runtime)):
            if epoch == first_epoch and batch_index < skip_batches:
                continue
            if batch_index >= steps_per_epoch * accumulation:
                break  # an incomplete accumulation at the epoch's end is dropped
            batch = tuple(t.to(runtime.device) for t in batch)
            sub_models = sub_models_for_step(sandwich, num_layers, sandwich_rng)
            boundary = (batch_index + 1) % accumulation == 0
            terms = train_step(settings.precision, sandwich, model, objective, batch, sub_models,
                               1.0 / accumulation, runtime, scaler, sync=boundary)
            for k, v in terms.items():
                running[k] += v
            if not boundary:
                continue
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), settings.max_grad_norm)
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
            bar.set_postfix(loss=f"{terms['loss'] * accumulation:.3f}")
            if runtime.is_main and settings.logging_steps > 0 and global_step % settings.logging_steps == 0:
                log_scalars(writer, running, logged_steps, scheduler, global_step)
                running, logged_steps = defaultdict(float), 0
                if settings.evaluate_during_training:
                    best = evaluate_and_keep_best(model, objective, eval_fn, global_step, best, training_state, save)
                    last_eval_step = global_step
            if settings.save_steps > 0 and global_step % settings.save_steps == 0:
                if runtime.is_main:
                    if not settings.save_only_best:
                        save(f"checkpoint-{global_step}", training_state())
                    save("checkpoint-last", training_state())
                runtime.barrier()
            if global_step >= total_steps:
                break
        if global_step >= total_steps:
            break
    bar.close()
    if runtime.is_main:
        if logged_steps:
            log_scalars(writer, running, logged_steps, scheduler, global_step)
        if settings.evaluate_during_training and last_eval_step != global_step:
            best = evaluate_and_keep_best(model, objective, eval_fn, global_step, best, training_state, save)
            last_eval_step = global_step
        save("checkpoint-last", training_state())
    runtime.barrier()
    return {"global_step": global_step, "best_f1": best["f1"], "last_eval_step": last_eval_step}


def log_scalars(writer, running: dict, steps: int, scheduler, global_step: int) -> None:
    scalars = {k: v / steps for k, v in running.items()}
    scalars["lr"] = scheduler.get_last_lr()[0]
    if writer is not None:
        for k, v in scalars.items():
            writer.add_scalar(f"train/{k}", v, global_step)
    logger.info("[step %d] %s", global_step, " | ".join(f"{k} {v:.4g}" for k, v in sorted(scalars.items())))


def evaluate_and_keep_best(model, objective, eval_fn, global_step, best, training_state, save):
    """Evaluate; on a new best F1, ``save("checkpoint-best", state)``. Returns the best so far."""
    results = eval_fn(unwrap(model), global_step)
    train_mode(model, objective)
    if results is not None and (best["f1"] is None or results["f1"] > best["f1"]):
        best = {"f1": results["f1"], "step": global_step}
        logger.info("best dev F1 so far (%.2f) at step %d: saving checkpoint-best", results["f1"], global_step)
        # training_state() still holds the previous best; this checkpoint is saved for the new one.
        save("checkpoint-best", {**training_state(), "best_f1": best["f1"]})
    return best
