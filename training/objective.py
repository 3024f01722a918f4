"""Which loss each paper step trains with: the full model's loss chosen by the flags, and the
sandwich rule's sub-models (LAT) with their in-place distillation and weights."""
from __future__ import annotations

import dataclasses
import random

import torch

from training import distillation
import length_drop
from training.checkpoints import unwrap
from training.settings import ObjectiveSettings, SandwichSettings


# Span logit given to padded positions when the losses run over real tokens only: exp() of it is
# exactly 0 in float32 next to any real logit, and unlike -inf it keeps KL terms finite.
MASKED_SPAN_LOGIT = -1e4


def mask_padding_logits(outputs, attention_mask, start_positions=None, end_positions=None):
    """``outputs`` with padded positions' span logits set to ``MASKED_SPAN_LOGIT`` and the span loss
    recomputed from them: every softmax (span loss, prediction and in-place distillation) then
    runs over real tokens only, so a batch padded to --max_seq_length and the same batch cut to
    its longest real sequence give the same losses (``--train_padding longest``)."""
    from modeling_bert import BertForQuestionAnswering

    padded = attention_mask == 0
    start = outputs.start_logits.masked_fill(padded, MASKED_SPAN_LOGIT)
    end = outputs.end_logits.masked_fill(padded, MASKED_SPAN_LOGIT)
    loss = BertForQuestionAnswering._span_loss(start, end, start_positions, end_positions)
    return dataclasses.replace(outputs, loss=loss, start_logits=start, end_logits=end)


class Objective:
    """The loss of one step for the full model, chosen by the flags, plus the sandwich's
    in-place distillation for sub-models. ``real_tokens_only``: every span softmax ignores
    padded positions (``mask_padding_logits``)."""

    def __init__(self, settings: ObjectiveSettings, teacher=None, real_tokens_only: bool = False):
        self.settings = settings
        self.teacher = teacher
        self.real_tokens_only = real_tokens_only

    def span_outputs(self, outputs, inputs):
        """The model's (or teacher's) outputs as the losses see them."""
        if not self.real_tokens_only or outputs is None:
            return outputs
        return mask_padding_logits(outputs, inputs["attention_mask"], inputs.get("start_positions"),
                                   inputs.get("end_positions"))

    @property
    def trains_token_scorers(self) -> bool:
        return self.settings.train_token_scorers_only or bool(self.settings.token_scorer_loss_ratio)

    @property
    def needs_hidden_states(self) -> bool:
        return self.settings.state_loss_ratio > 0

    @property
    def needs_attention_scores(self) -> bool:
        return self.settings.att_loss_ratio > 0 and self.settings.attention_loss_input == "scores"

    @property
    def needs_attention_probs(self) -> bool:
        return self.settings.att_loss_ratio > 0 and self.settings.attention_loss_input == "probabilities"

    def teacher_outputs(self, inputs):
        if self.teacher is None:
            return None
        with torch.no_grad():
            outputs = self.teacher(**inputs, output_hidden_states=self.settings.state_loss_ratio > 0,
                                   output_attentions=self.needs_attention_probs,
                                   output_attention_scores=self.needs_attention_scores)
            return self.span_outputs(outputs, inputs)

    def full_model_loss(self, model, outputs, teacher_out, inputs=None) -> tuple[torch.Tensor, dict]:
        """Loss of the full model, and its named terms for logging: the step's loss, plus the
        learned token scorers' (``--token_scorer_loss_ratio``), or theirs alone in the fit stage."""
        settings = self.settings
        if settings.train_token_scorers_only:
            loss = self.token_scorer_loss(model, outputs, inputs)
            return loss, {"scorer_loss": loss.item()}
        loss, terms = self.step_loss(model, outputs, teacher_out)
        if settings.token_scorer_loss_ratio:
            scorer = self.token_scorer_loss(model, outputs, inputs)
            loss = loss + settings.token_scorer_loss_ratio * scorer
            terms["scorer_loss"] = scorer.item()
        return loss, terms

    def token_scorer_loss(self, model, outputs, inputs) -> torch.Tensor:
        """Each layer's scorer on what it reads at full length (the layer's input or its attention
        output: the outputs' ``scorer_states``), against the gold span's tokens or the model's own
        span distributions (``--token_scorer_targets``), over the context's real tokens (the
        protected ones, [CLS], question and [SEP]s, are never dropped)."""
        from modeling_bert import protected_tokens, question_tokens

        scorers = unwrap(model).bert.encoder.token_scorers
        mask, types = inputs["attention_mask"], inputs["token_type_ids"]
        counted = (mask != 0) & ~protected_tokens(mask, types, inputs["input_ids"])
        if self.settings.token_scorer_targets == "soft":
            start = outputs.start_logits.detach().masked_fill(mask == 0, MASKED_SPAN_LOGIT)
            end = outputs.end_logits.detach().masked_fill(mask == 0, MASKED_SPAN_LOGIT)
            targets = distillation.soft_answer_tokens(start, end)
        else:
            targets = distillation.gold_answer_tokens(inputs["start_positions"], inputs["end_positions"],
                                                      mask.size(1))
        question = question_tokens(mask, types, inputs["input_ids"])
        logits = [scorer(states, question) for scorer, states in zip(scorers, outputs.scorer_states)]
        return distillation.token_scorer_loss(logits, targets, counted)

    def step_loss(self, model, outputs, teacher_out) -> tuple[torch.Tensor, dict]:
        """The paper step's loss: span loss, or the teacher's distillation losses."""
        settings = self.settings
        if teacher_out is None:
            return outputs.loss, {"span_loss": outputs.loss.item()}
        if settings.pred_distill:
            loss = distillation.prediction_distillation_loss(
                outputs.start_logits, outputs.end_logits,
                teacher_out.start_logits, teacher_out.end_logits, settings.temperature)
            return loss, {"pred_loss": loss.item()}
        terms, loss = {}, 0.0
        if settings.state_loss_ratio > 0:
            fit_dense = getattr(unwrap(model), "fit_dense", None)
            rep = distillation.hidden_state_loss(outputs.hidden_states, teacher_out.hidden_states, fit_dense)
            loss = loss + settings.state_loss_ratio * rep
            terms["rep_loss"] = rep.item()
        if settings.att_loss_ratio > 0:
            if settings.attention_loss_input == "scores":
                student_att, teacher_att = outputs.attention_scores, teacher_out.attention_scores
            else:  # Intel's distill(): post-softmax, post-dropout probabilities
                student_att, teacher_att = outputs.attentions, teacher_out.attentions
            att = distillation.attention_loss(student_att, teacher_att, use_mse=settings.att_mse)
            loss = loss + settings.att_loss_ratio * att
            terms["att_loss"] = att.item()
        return loss, terms

    def sub_model_loss(self, sub_outputs, full_start, full_end) -> torch.Tensor:
        return distillation.inplace_distillation_loss(
            sub_outputs.start_logits, sub_outputs.end_logits, full_start, full_end,
            reference_direction=not self.settings.conventional_inplace_kl)


def sub_models_for_step(settings: SandwichSettings, num_layers: int, rng: random.Random):
    """The sub-models one step trains: the full model alone, or the sandwich (step 4)."""
    if settings.length_adaptive:
        return length_drop.sandwich_configurations(
            num_layers, settings.max_seq_length, settings.num_sandwich, settings.length_drop_ratio_bound,
            layer_dropout_prob=settings.layer_dropout_prob, layer_dropout_bound=settings.layer_dropout_bound,
            rng=rng, relative=settings.length_space == "relative", smallest_config=settings.smallest_length_config)
    layer_config = length_drop.sample_layer_configuration(
        num_layers, layer_dropout_prob=settings.layer_dropout_prob, layer_dropout=0, rng=rng)
    return [length_drop.SubModel("full", settings.length_config, layer_config)]


def sandwich_weight(settings: SandwichSettings, index: int, num_models: int) -> float:
    """Weight of model ``index`` (0 = the full model) in one step's loss: 1 without the sandwich;
    the reference's 1 / num_models for each; or ``--sandwich_full_weight`` for the full model and
    the rest shared equally by the sub-models."""
    if not settings.length_adaptive:
        return 1.0
    if settings.sandwich_full_weight is None:
        return 1.0 / num_models
    if index == 0:
        return settings.sandwich_full_weight
    return (1.0 - settings.sandwich_full_weight) / (num_models - 1)
