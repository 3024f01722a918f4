"""Training objectives of the paper's steps: span cross-entropy, TinyBERT's intermediate-layer and
prediction-layer distillation, and LAT's in-place distillation for the sandwich rule.

Every function takes plain tensors so it can be checked on tiny hand-made inputs.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from core.errors import UsageError

# TinyBERT zeroes attention scores of masked positions (mask value -10000 then, finfo.min now)
# before comparing teacher and student, so padding contributes nothing.
MASKED_SCORE_THRESHOLD = -1e2


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """-sum softmax(teacher / T) * log_softmax(student / T) over the last axis, mean over the rest."""
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_probs = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return (-teacher_probs * student_log_probs).sum(dim=-1).mean()


def prediction_distillation_loss(student_start, student_end, teacher_start, teacher_end,
                                 temperature: float = 1.0) -> torch.Tensor:
    """Step 3: soft cross-entropy against the teacher's start and end distributions, averaged."""
    return (soft_cross_entropy(student_start, teacher_start, temperature)
            + soft_cross_entropy(student_end, teacher_end, temperature)) / 2


def layers_per_block(student_layers: int, teacher_layers: int) -> int:
    """TinyBERT's uniform mapping step k: student layer j learns from teacher layer j*k."""
    if student_layers < 1 or teacher_layers % student_layers != 0:
        raise UsageError(
            f"intermediate-layer distillation needs the teacher's layer count ({teacher_layers}) "
            f"to be a multiple of the student's ({student_layers})")
    return teacher_layers // student_layers


def hidden_state_pairs(num_student_layers: int, num_teacher_layers: int) -> list[tuple[int, int]]:
    """(student index, teacher index) into hidden-state tuples that start with the embeddings:
    embeddings <-> embeddings, student layer j <-> teacher layer j*k."""
    k = layers_per_block(num_student_layers, num_teacher_layers)
    return [(j, j * k) for j in range(num_student_layers + 1)]


def attention_pairs(num_student_layers: int, num_teacher_layers: int) -> list[tuple[int, int]]:
    """(student index, teacher index) into per-layer attention tuples (0-based layers):
    student layer j+1 <-> teacher layer (j+1)*k, i.e. index j <-> (j+1)*k - 1."""
    k = layers_per_block(num_student_layers, num_teacher_layers)
    return [(j, (j + 1) * k - 1) for j in range(num_student_layers)]


def hidden_state_loss(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
                      fit_dense: torch.nn.Module | None = None) -> torch.Tensor:
    """Sum over mapped layers of MSE(fit_dense(student hidden), teacher hidden)."""
    pairs = hidden_state_pairs(len(student_hidden) - 1, len(teacher_hidden) - 1)
    loss = student_hidden[0].new_zeros((), dtype=torch.float32)
    for s, t in pairs:
        student = student_hidden[s] if fit_dense is None else fit_dense(student_hidden[s])
        loss = loss + F.mse_loss(student.float(), teacher_hidden[t].float())
    return loss


def _zero_masked(scores: torch.Tensor) -> torch.Tensor:
    return torch.where(scores <= MASKED_SCORE_THRESHOLD, torch.zeros_like(scores), scores)


def attention_loss(student_scores: Sequence[torch.Tensor], teacher_scores: Sequence[torch.Tensor],
                   use_mse: bool = True) -> torch.Tensor:
    """Sum over mapped layers of the attention-score loss: MSE with ``--att_mse`` (TinyBERT), else
    the reference's alternative, 1 - cosine similarity along the key axis."""
    pairs = attention_pairs(len(student_scores), len(teacher_scores))
    loss = student_scores[0].new_zeros((), dtype=torch.float32)
    for s, t in pairs:
        student, teacher = _zero_masked(student_scores[s].float()), _zero_masked(teacher_scores[t].float())
        if student.shape != teacher.shape:
            raise ValueError(f"attention shapes differ: student layer {s} {tuple(student.shape)}, "
                             f"teacher layer {t} {tuple(teacher.shape)} (heads must match)")
        if use_mse:
            loss = loss + F.mse_loss(student, teacher)
        else:
            loss = loss + (1.0 - F.cosine_similarity(student, teacher, dim=-1).mean())
    return loss


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over the last axis, mean over the batch (KLDivLoss's 'batchmean')."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).sum() / log_p.shape[0]


def inplace_distillation_loss(sub_start, sub_end, full_start, full_end,
                              reference_direction: bool = True) -> torch.Tensor:
    """LAT's in-place distillation of a sub-model from the full model's detached span logits.

    The reference computes ``KLDivLoss(batchmean)(log_softmax(full), softmax(sub))``, which is
    KL(sub || full) with the gradient flowing through the sub-model's distribution: the roles
    of input and target are swapped relative to the usual KL(full || sub). ``reference_direction``
    keeps that; False gives the conventional KL(full || sub) (``--conventional_inplace_kl``).
    """
    full_start, full_end = full_start.detach().float(), full_end.detach().float()
    log_sub = [F.log_softmax(sub_start.float(), -1), F.log_softmax(sub_end.float(), -1)]
    log_full = [F.log_softmax(full_start, -1), F.log_softmax(full_end, -1)]
    if reference_direction:
        terms = [kl_divergence(s, f) for s, f in zip(log_sub, log_full)]
    else:
        terms = [kl_divergence(f, s) for s, f in zip(log_sub, log_full)]
    return (terms[0] + terms[1]) / 2


# --------------------------------------------------------------------------------------------
# The learned drop criterion's scorers (an extension): which tokens the answer needs
# --------------------------------------------------------------------------------------------

def gold_answer_tokens(start_positions: torch.Tensor, end_positions: torch.Tensor, width: int) -> torch.Tensor:
    """Float ``[B, width]``: 1 on the gold span's tokens, 0 elsewhere and in windows without the
    answer (their positions point at [CLS], 0)."""
    position = torch.arange(width, device=start_positions.device)
    start, end = start_positions.view(-1, 1), end_positions.view(-1, 1)
    return ((position >= start) & (position <= end) & (start > 0)).float()


def soft_answer_tokens(start_logits: torch.Tensor, end_logits: torch.Tensor) -> torch.Tensor:
    """Float ``[B, L]``: the probability that the model's own span covers each token, taking start
    and end as independent, ``P(start <= t) * P(end >= t)`` (no labels needed)."""
    start = torch.softmax(start_logits.float(), dim=-1).cumsum(dim=-1)
    end = torch.softmax(end_logits.float(), dim=-1).flip(-1).cumsum(dim=-1).flip(-1)
    return (start * end).clamp(0.0, 1.0)


def token_scorer_loss(logits: Sequence[torch.Tensor], targets: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Class-weighted binary cross-entropy of each layer's scorer logits ``[B, L]`` against
    ``targets`` in [0, 1], over the ``counted`` tokens (the context's real ones), averaged over
    layers. Answer tokens are a few percent of a window: they weigh as much, in all, as the rest."""
    weights = counted.float()
    positives = (targets * weights).sum()
    negatives = weights.sum() - positives
    pos_weight = (negatives / positives.clamp(min=1.0)).clamp(min=1.0).detach()
    losses = [F.binary_cross_entropy_with_logits(layer.float(), targets, weight=weights, pos_weight=pos_weight,
                                                 reduction="sum") / weights.sum().clamp(min=1.0)
              for layer in logits]
    return torch.stack(losses).mean()
