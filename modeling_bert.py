"""A BERT question-answering model with Drop-and-Restore length reduction (LengthDrop).

Re-implementation, for current torch/transformers, of the Length-Adaptive Transformer's BERT
(Kim & Cho 2021) as used by Dynamic-TinyBERT (Intel Labs 2021):

* After a layer's self-attention, every token gets a significance score: the attention it
  receives, summed over heads and (real) queries (PoWER-BERT). The layer keeps the ``k`` most
  significant tokens (``k = length_config[layer]``) and runs its feed-forward block on them only;
  later layers see only the kept tokens.
* Restore: a dropped token keeps the hidden state of the last layer that kept it, so the QA head
  sees every input position and span logits exist for all of them.
* ``layer_config`` (LayerDrop): the layers to run; the others pass their input through.
* ``config.drop_criterion = "learned"`` (an extension, not the paper's): each layer ranks tokens by
  a small learned scorer on its input hidden states (``TokenScorer``, trained to find the answer's
  tokens) instead of the attention they receive; [CLS], the question and the [SEP]s are never
  dropped. With ``config.select_before_attention`` the layer selects before its attention too;
  with ``config.token_scorer_input = "attention_output"`` the scorer reads the layer's attention
  output instead of its input (after the attention, before the feed-forward block).
  ``config.token_scorer = "bilinear"`` scores with the question's mean state as well.
  Instead of a count, ``keep_thresholds`` lets each example keep, at each layer, the tokens its
  scorer puts above a probability (``forward``; eager evaluation only: the counts depend on
  the data).
  The scorers are saved beside the weights in ``token_scorers.safetensors``, which plain
  transformers never reads.

Module and parameter names are exactly those of ``transformers.BertForQuestionAnswering`` so
checkpoints load in both directions. Masking uses an additive -10000 (as transformers 3.x, which
the reference targeted, and TinyBERT); ``attention_scores`` therefore holds -10000-shifted values
at padded keys (TinyBERT's attention loss zeroes entries <= -1e2).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.symbolic_shapes import statically_known_true
from transformers import BertConfig
from transformers.models.bert.modeling_bert import (
    BertEmbeddings,
    BertIntermediate,
    BertOutput,
    BertPreTrainedModel,
    BertSelfOutput,
)
from transformers.utils import ModelOutput

import length_drop
from core.checks import SCORERS_FILE, token_selection

# Additive mask value for padded keys (transformers 3.x / TinyBERT convention).
MASK_VALUE = -10000.0
# Score elements per chunk in the inference attention loop (2M floats = 8 MiB).
_CHUNK_SCORES = 2 * 1024 * 1024
# How a layer ranks the tokens it may drop (DROP_CRITERIA, core.checks): the attention they receive
# (the paper's) or a scorer of one of these kinds, its weights in SCORERS_FILE.
TOKEN_SCORERS = ("linear", "mlp", "bilinear")
# What a scorer reads: the layer's input (selection can then come before the attention too) or the
# layer's attention output (one more mixing with the question; the layer then selects after its
# attention, before the feed-forward block, as the paper's criterion does).
TOKEN_SCORER_INPUTS = ("layer_input", "attention_output")
BILINEAR_RANK = 64  # the question-aware scorer's rank (bench/bench_scorer_recall.py measured it)
SCORERS_PREFIX = "bert.encoder.token_scorers."


@dataclass
class QAOutput(ModelOutput):
    """Outputs of :class:`BertForQuestionAnswering`.

    hidden_states: ``num_hidden_layers + 1`` tensors ``[B, L, H]`` at full (restored) length.
    attentions / attention_scores: one tensor ``[B, heads, n, n]`` per *executed* layer, ``n`` the
    number of tokens entering that layer, kept tokens in their original order; scores are
    pre-softmax with the additive -10000 padding mask applied.
    """

    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    attention_scores: tuple[torch.Tensor, ...] | None = None
    kept_counts: torch.Tensor | None = None  # [B, layers] under keep_thresholds: tokens each example kept
    scorer_states: tuple[torch.Tensor, ...] | None = None  # per layer, what its token scorer reads (full length)


@dataclass(frozen=True)
class ForwardOptions:
    """What one forward pass computes and returns, beyond the logits (keyword-only everywhere)."""

    length_config: tuple[int, ...] | None = None  # tokens kept per layer (resolved); None: full length
    layers_to_run: frozenset[int] | None = None   # LayerDrop; None: every layer
    output_hidden_states: bool = False
    output_attentions: bool = False
    output_attention_scores: bool = False
    always_keep_cls_token: bool = False
    count_padding_queries: bool = False
    select_before_attention: bool = False         # learned criterion: select before the attention too
    keep_thresholds: tuple[float, ...] | None = None  # learned criterion: keep scorer probabilities above these
    output_scorer_states: bool = False            # learned criterion: return what each scorer reads


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    attentions: tuple[torch.Tensor, ...] | None
    attention_scores: tuple[torch.Tensor, ...] | None
    kept_counts: torch.Tensor | None = None
    scorer_states: tuple[torch.Tensor, ...] | None = None


def _flat_rows(index: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Row numbers into a ``[B * seq_len, H]`` view for per-example token indices ``[B, k]``."""
    offsets = torch.arange(index.size(0), device=index.device).unsqueeze(1) * seq_len
    return (index + offsets).reshape(-1)


def gather_tokens(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``hidden[b, index[b]]`` for ``hidden [B, n, H]`` and ``index [B, k]`` -> ``[B, k, H]``."""
    batch, seq_len, width = hidden.shape
    rows = hidden.reshape(batch * seq_len, width).index_select(0, _flat_rows(index, seq_len))
    return rows.view(batch, index.size(1), width)


def scatter_tokens(base: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A copy of ``base [B, L, H]`` with ``base[b, index[b]] = values[b]`` (out of place)."""
    batch, seq_len, width = base.shape
    flat = base.reshape(batch * seq_len, width).index_copy(
        0, _flat_rows(index, seq_len), values.reshape(-1, width).to(base.dtype))
    return flat.view(batch, seq_len, width)


def significance_from_probs(probs: torch.Tensor, real_tokens: torch.Tensor | None,
                            count_padding_queries: bool) -> torch.Tensor:
    """Attention each token receives, summed over heads and queries (PoWER-BERT score, as the
    reference): ``probs [..., heads, queries, keys] -> [..., keys]``. Only real queries count
    unless ``count_padding_queries`` (the reference counts every row)."""
    if real_tokens is not None and not count_padding_queries:
        query_weights = real_tokens.to(probs.dtype).unsqueeze(-2).unsqueeze(-3)  # [..., 1, 1, queries]
        return torch.matmul(query_weights, probs).sum(dim=(-3, -2))
    return probs.sum(dim=(-3, -2))


def select_tokens(significance: torch.Tensor, keep: int, always_keep_cls_token: bool,
                  example_keep: torch.Tensor | None = None):
    """Indices ``[B, keep]`` (ascending) of the most significant tokens, of the dropped ones, and
    (with ``example_keep [B]``, each example's own count, at most ``keep``) which kept slots hold
    one of its example's ``example_keep[b]`` most significant tokens (bool ``[B, keep]``; None
    without it).

    Padded keys receive zero attention, so padding never outranks a real token; ties are broken
    toward the earlier position (stable sort). With ``always_keep_cls_token`` token 0 is kept.
    """
    significance = significance.float()
    if always_keep_cls_token:
        significance[:, 0] = math.inf
    if torch.compiler.is_compiling():
        # torch.export (ONNX): a stable sort has no ONNX translation; ONNX TopK breaks ties toward
        # the lower index, which is the stable order.
        order = torch.topk(significance, significance.size(1), dim=1).indices
    else:
        order = torch.argsort(significance, dim=1, descending=True, stable=True)
    kept, permutation = order[:, :keep].sort(dim=1)
    if example_keep is None:
        return kept, order[:, keep:], None
    ranks = torch.arange(kept.size(1), device=kept.device).expand_as(kept)
    return kept, order[:, keep:], ranks.gather(1, permutation) < example_keep.unsqueeze(1)


def learned_significance(logits: torch.Tensor, real_tokens: torch.Tensor | None,
                         protected: torch.Tensor | None) -> torch.Tensor:
    """A scorer's logits as ``select_tokens`` ranks them: protected tokens first, padding last."""
    significance = logits.float()
    if protected is not None:
        significance = significance.masked_fill(protected, math.inf)
    if real_tokens is not None:
        significance = significance.masked_fill(~real_tokens, -math.inf)
    return significance


def protected_tokens(attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None,
                     input_ids: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, L]``: the tokens the learned criterion never drops, [CLS], the question and its
    [SEP] (the real tokens of segment 0) and each row's last real token (the closing [SEP])."""
    real = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask != 0)
    if token_type_ids is None:
        protected = torch.zeros_like(real)
        protected[:, 0] = True
    else:
        protected = (token_type_ids == 0) & real
    last = (real.sum(dim=1, keepdim=True) - 1).clamp(min=0)
    return protected.scatter(1, last, torch.ones_like(last, dtype=torch.bool))


def question_tokens(attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None,
                    input_ids: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, L]``: the question's tokens and its [SEP] (the real tokens of segment 0 after
    [CLS]), which the ``bilinear`` scorer averages to know what is asked."""
    real = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask != 0)
    question = real if token_type_ids is None else (token_type_ids == 0) & real
    return question & (torch.arange(input_ids.size(1), device=input_ids.device) > 0)


class TokenScorer(nn.Module):
    """The learned drop criterion of one layer: a logit per token, from the layer's input hidden
    states (or its attention output, ``config.token_scorer_input``), of "this token is needed by
    the answer" (trained on the gold span or the full model's own span distributions,
    ``training.distillation.token_scorer_loss``). ``linear``: one linear layer; ``mlp``: hidden ->
    hidden/4 -> GELU -> 1; ``bilinear``: linear plus ``(P h) . (Q q)`` of rank ``BILINEAR_RANK``,
    ``q`` the mean of the question tokens' states (a scorer that sees what is asked)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.kind = getattr(config, "token_scorer", "linear")
        if self.kind not in TOKEN_SCORERS:
            raise ValueError(f"config.token_scorer must be one of {TOKEN_SCORERS}, got {self.kind!r}")
        self.reads_attention_output = token_scorer_input_of(config) == "attention_output"
        hidden = config.hidden_size
        if self.kind == "mlp":
            self.net = nn.Sequential(nn.Linear(hidden, hidden // 4), nn.GELU(), nn.Linear(hidden // 4, 1))
        else:
            self.net = nn.Linear(hidden, 1)
        if self.kind == "bilinear":
            self.token_projection = nn.Linear(hidden, BILINEAR_RANK, bias=False)
            self.question_projection = nn.Linear(hidden, BILINEAR_RANK)

    @property
    def reads_question(self) -> bool:
        return self.kind == "bilinear"

    def forward(self, hidden: torch.Tensor, question: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, n]``; ``question [B, n]`` (bool, ``question_tokens``) for the bilinear kind."""
        # float32 under bf16/fp16 autocast too: the top-k picks by these scores, and half precision
        # would make near ties (and so the kept tokens) depend on rounding; the head is tiny
        with torch.autocast(hidden.device.type, enabled=False):
            hidden = hidden.float()
            logits = self.net(hidden).squeeze(-1)
            if self.kind == "bilinear":
                if question is None:
                    raise ValueError("the bilinear token scorer needs the question's tokens (question_tokens)")
                weights = question.unsqueeze(-1).float()
                asked = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # [B, H]
                logits = logits + (self.token_projection(hidden) * self.question_projection(asked).unsqueeze(1)).sum(-1)
            return logits


def token_scorer_input_of(config) -> str:
    """What the token scorers read (``TOKEN_SCORER_INPUTS``); ``attention_output`` cannot go with
    selecting before the attention, which has no attention output yet to score."""
    get = config.get if isinstance(config, dict) else lambda name: getattr(config, name, None)
    reads = get("token_scorer_input") or "layer_input"
    if reads not in TOKEN_SCORER_INPUTS:
        raise ValueError(f"config.token_scorer_input must be one of {TOKEN_SCORER_INPUTS}, got {reads!r}")
    if reads == "attention_output" and get("select_before_attention"):
        raise ValueError("config.token_scorer_input 'attention_output' cannot go with select_before_attention "
                         "(selecting before the attention leaves no attention output to score)")
    return reads


def drop_criterion_of(config) -> str:
    return token_selection(config)["drop_criterion"]


def example_keep_counts(fractions, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, layers]``: each example's own token count per layer for keep ``fractions``
    (``ceil(f * its real length)``, ``length_drop.resolve_length_config``'s rule); None where it
    changes nothing, every example being as long as the batch's longest (skipped under tracing,
    which keeps the graph data-independent)."""
    if attention_mask is None:
        return None
    lengths = attention_mask.sum(dim=1)
    tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
    if not tracing and bool((lengths == lengths.max()).all()):
        return None
    return torch.stack(length_drop.resolve_length_config(tuple(fractions), lengths), dim=1)


def real_tokens_of(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Bool ``[B, L]``, True at real tokens; None when there is no padding, so attention runs
    unmasked (fastest). That check reads tensor values: while tracing (``torch.jit.trace``,
    ONNX export) it is skipped and the mask kept, which gives the same logits either way."""
    if attention_mask is None:
        return None
    real_tokens = attention_mask != 0
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return real_tokens
    return None if bool(real_tokens.all()) else real_tokens


def longest_real_length(input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    """The batch's longest real sequence, whose count of a relative configuration the batch
    holds (each example keeps its own, ``example_keep_counts``). Under tracing or export it is the
    input's width (a shape, so the graph stays data-independent); the per-example counts still
    come from the mask, so an exported graph gives the same answers however far a batch is padded."""
    width = input_ids.size(1)
    if attention_mask is None or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return width
    return max(1, int(attention_mask.sum(dim=1).max()))


class BertSelfAttention(nn.Module):
    """Multi-head self-attention. Three ways, same result:

    * SDPA when neither probabilities, scores nor significance are needed (full length);
    * explicit batched scores/softmax/matmul when probabilities or scores are returned or
      autograd is recording (training);
    * otherwise (inference with token dropping) an explicit loop over chunks of examples with an
      in-place softmax: each chunk's score block (one example at n = 384) stays in cache, which
      makes it about as fast as SDPA, and yields the significance without storing the batch's
      probabilities.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        if config.hidden_size % config.num_attention_heads != 0:
            raise ValueError(f"config.hidden_size ({config.hidden_size}) must be a multiple of "
                             f"config.num_attention_heads ({config.num_attention_heads})")
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        return x.view(batch, seq_len, self.num_heads, self.head_size).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, real_tokens: torch.Tensor | None, *,
                options: ForwardOptions, need_significance: bool):
        """Returns ``(context [B, n, H], probs, scores, significance [B, n])``, the last three
        None unless asked for. Probabilities are after attention dropout (as transformers)."""
        need_probs, need_scores = options.output_attentions, options.output_attention_scores
        count_padding_queries = options.count_padding_queries
        batch, seq_len, width = hidden.shape
        query = self._heads(self.query(hidden))
        key = self._heads(self.key(hidden))
        value = self._heads(self.value(hidden))
        probs = scores = significance = None
        if not (need_probs or need_scores or need_significance):
            mask = None if real_tokens is None else real_tokens[:, None, None, :]
            dropout = self.dropout.p if self.training else 0.0
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout)
            return context.transpose(1, 2).reshape(batch, seq_len, width), None, None, None
        if need_probs or need_scores or (torch.is_grad_enabled() and query.requires_grad) or self.training:
            scores, probs, context = self._batched(query, key, value, real_tokens)
            if need_significance:
                significance = significance_from_probs(probs, real_tokens, count_padding_queries)
            context = context.transpose(1, 2).reshape(batch, seq_len, width)
            return context, probs if need_probs else None, scores if need_scores else None, significance
        if _flash_significance_available(query):
            context, significance = flash_attention_with_significance(query, key, value, real_tokens,
                                                                      count_padding_queries)
        elif torch.compiler.is_compiling():  # one block: a loop over a symbolic batch would fix its size
            _, probs, context = self._batched(query, key, value, real_tokens)
            significance = significance_from_probs(probs, real_tokens, count_padding_queries)
            context, probs = context.transpose(1, 2), None
        else:
            context, significance = self._chunked_inference(query, key, value, real_tokens, count_padding_queries)
        return context.reshape(batch, seq_len, width), None, None, significance

    def _scores(self, query, key, additive_mask):
        # div_ rather than a multiplication: torchprofile then counts only the two attention
        # matmuls, like SDPA's count. Masked keys get -10000 (reference/TinyBERT convention).
        scores = torch.matmul(query, key.transpose(-1, -2)).div_(math.sqrt(self.head_size))
        return scores if additive_mask is None else scores.add_(additive_mask.to(scores.dtype))

    def _batched(self, query, key, value, real_tokens):
        mask = None if real_tokens is None else _additive_mask(real_tokens)[:, None, None, :]
        scores = self._scores(query, key, mask)
        probs = self.dropout(torch.softmax(scores, dim=-1))
        return scores, probs, torch.matmul(probs.to(value.dtype), value)

    def _chunked_inference(self, query, key, value, real_tokens, count_padding_queries):
        """Inference only (in-place ops): context ``[B, n, heads, head_size]`` and significance.
        Examples go in chunks whose score block fits in about 8 MiB (one example at n = 384)."""
        batch, heads, seq_len, _ = query.shape
        chunk = max(1, _CHUNK_SCORES // (heads * seq_len * seq_len))
        contexts, significances = [], []
        for first in range(0, batch, chunk):
            part = slice(first, first + chunk)
            real = None if real_tokens is None else real_tokens[part]
            mask = None if real is None else _additive_mask(real)[:, None, None, :]
            scores = self._scores(query[part], key[part], mask)
            if scores.dtype in (torch.float16, torch.bfloat16):
                scores = scores.float()  # softmax in fp32, as autocast does
            probs = scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
            probs = probs.div_(probs.sum(dim=-1, keepdim=True))
            significances.append(significance_from_probs(probs, real, count_padding_queries))
            contexts.append(torch.matmul(probs.to(value.dtype), value[part]).transpose(1, 2))
        if len(contexts) == 1:
            return contexts[0], significances[0]
        return torch.cat(contexts), torch.cat(significances)


_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _flash_significance_available(query: torch.Tensor) -> bool:
    # Not under tracing or torch.export/compile: torchprofile (MACs) and exports see the explicit
    # path, whose matmuls are
    # the model's MACs (the flash path's second pass adds 2n²H executed MACs that are not the
    # model's, and is a private aten op that exporters do not know).
    return (_FLASH_CPU is not None and query.device.type == "cpu" and not torch.is_grad_enabled()
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling())


def flash_attention_with_significance(query, key, value, real_tokens, count_padding_queries):
    """Inference attention and exact significance from two fused (flash) attention passes, without
    materialising the ``[B, heads, n, n]`` probabilities (on 2 CPU threads, 16 x 384 tokens,
    12 heads of 32: 104 ms against 126 ms for the explicit softmax, and far less sensitive to
    other load; SDPA alone, without significance, takes 51 ms).

    Significance of key j is ``sum_h sum_i P[h, i, j] = sum_h sum_i exp(s_hij - lse_hi)``: the
    normaliser of a second, transposed attention pass (keys as queries, queries as keys, each
    column biased by its row's ``-lse``), which the kernel returns as its log-sum-exp. Padded
    queries get bias -inf (not counted) unless ``count_padding_queries``; padded keys get the
    usual additive -10000, so their significance is 0 as in the explicit path.
    Returns ``(context [B, n, heads, head_size], significance [B, n] float32)``."""
    mask = None if real_tokens is None else _additive_mask(real_tokens)[:, None, None, :].to(query.dtype)
    context, lse = _FLASH_CPU(query, key, value, 0.0, False, attn_mask=mask)
    bias = -lse.float()  # [B, heads, n]
    if real_tokens is not None and not count_padding_queries:
        bias = bias.masked_fill(~real_tokens[:, None, :], float("-inf"))
    _, lse_t = _FLASH_CPU(key, query, value, 0.0, False, attn_mask=bias[:, :, None, :].to(query.dtype))
    significance = lse_t.float().exp().sum(dim=1)
    if real_tokens is not None:
        significance = significance.masked_fill(~real_tokens, 0.0)
    return context.transpose(1, 2), significance


def _additive_mask(real_tokens: torch.Tensor) -> torch.Tensor:
    """Bool ``[..., n]`` -> float additive mask: 0 for real keys, -10000 for padding."""
    return torch.zeros(real_tokens.shape, device=real_tokens.device).masked_fill_(~real_tokens, MASK_VALUE)


class BertAttention(nn.Module):
    """Self-attention followed by the output projection, residual and LayerNorm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden, real_tokens, *, options: ForwardOptions, need_significance: bool):
        context, probs, scores, significance = self.self(
            hidden, real_tokens, options=options, need_significance=need_significance)
        return self.output(context, hidden), probs, scores, significance


@dataclass
class LayerResult:
    """What one layer hands back to the encoder."""

    hidden: torch.Tensor                 # [B, k, H] output of the kept tokens
    kept: torch.Tensor | None            # [B, k] indices into the layer's input; None: all kept
    dropped: torch.Tensor | None         # [B, n - k] indices of the dropped tokens
    probs: torch.Tensor | None
    scores: torch.Tensor | None
    within: torch.Tensor | None = None   # [B, k]: kept slots within their example's own count
    scored: torch.Tensor | None = None   # [B, n, H]: what the scorer read (options.output_scorer_states)


class BertLayer(nn.Module):
    """A BERT layer that can keep only its ``keep`` most significant tokens."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden: torch.Tensor, real_tokens: torch.Tensor | None, keep: int | None, *,
                options: ForwardOptions, scorer: TokenScorer | None = None,
                protected: torch.Tensor | None = None, question: torch.Tensor | None = None,
                example_keep: torch.Tensor | None = None, threshold: float | None = None) -> LayerResult:
        """``scorer``: the learned criterion ranks the tokens (``protected`` ones always kept;
        ``question`` marks the question's tokens for a scorer that reads them); None: the attention
        they receive. ``example_keep [B]``: each example's own count (a keep fraction of its own
        length); the batch keeps ``keep``, its largest. ``threshold`` (with a scorer, instead of
        ``keep``): each example keeps its tokens of scorer probability above it."""
        if scorer is not None and scorer.reads_attention_output:
            return self._forward_scoring_attention_output(hidden, real_tokens, keep, options, scorer, protected,
                                                          question, example_keep, threshold)
        significance = None
        if threshold is not None:
            significance = learned_significance(scorer(hidden, question), real_tokens, protected)
            keep, example_keep = _threshold_counts(significance, threshold, real_tokens)
        # A shape comparison, not a tensor value: fixed for a fixed configuration and input size.
        drops, keep = _drop_decision(keep, hidden.size(1))
        kept = dropped = within = None
        if threshold is not None:
            drops = example_keep is not None
        if not drops:
            example_keep = None
        scored = hidden if scorer is not None and options.output_scorer_states else None
        if drops and scorer is not None:
            if significance is None:
                significance = learned_significance(scorer(hidden, question), real_tokens, protected)
            kept, dropped, within = select_tokens(significance, keep, options.always_keep_cls_token, example_keep)
            if options.select_before_attention:  # attention, too, runs on the kept tokens only
                hidden = gather_tokens(hidden, kept)
                real_tokens = None if real_tokens is None else real_tokens.gather(1, kept)
                if within is not None:  # beyond its example's count a token is padding already here
                    real_tokens = within if real_tokens is None else real_tokens & within
            attention_output, probs, scores, _ = self.attention(
                hidden, real_tokens, options=options, need_significance=False)
            if not options.select_before_attention:
                attention_output = gather_tokens(attention_output, kept)
        else:
            attention_output, probs, scores, significance = self.attention(
                hidden, real_tokens, options=options, need_significance=drops)
            if drops:
                # As the reference: gather the attention block's output, run the FFN on kept tokens.
                kept, dropped, within = select_tokens(significance, keep, options.always_keep_cls_token,
                                                      example_keep)
                attention_output = gather_tokens(attention_output, kept)
        layer_output = self.output(self.intermediate(attention_output), attention_output)
        return LayerResult(layer_output, kept, dropped, probs, scores, within, scored)

    def _forward_scoring_attention_output(self, hidden, real_tokens, keep, options: ForwardOptions,
                                          scorer: TokenScorer, protected, question, example_keep,
                                          threshold) -> LayerResult:
        """The learned criterion on the attention block's output: attention on every token, then
        the scorer ranks the attention outputs and the feed-forward block runs on the kept ones."""
        attention_output, probs, scores, _ = self.attention(hidden, real_tokens, options=options,
                                                            need_significance=False)
        scored = attention_output if options.output_scorer_states else None
        drops, keep = _drop_decision(keep, hidden.size(1))
        significance = None
        if threshold is not None or drops:
            significance = learned_significance(scorer(attention_output, question), real_tokens, protected)
        if threshold is not None:
            keep, example_keep = _threshold_counts(significance, threshold, real_tokens)
            drops = example_keep is not None
        kept = dropped = within = None
        if drops:
            kept, dropped, within = select_tokens(significance, keep, options.always_keep_cls_token, example_keep)
            attention_output = gather_tokens(attention_output, kept)
        layer_output = self.output(self.intermediate(attention_output), attention_output)
        return LayerResult(layer_output, kept, dropped, probs, scores, within, scored)


def _threshold_counts(significance: torch.Tensor, threshold: float, real_tokens: torch.Tensor | None):
    """(the batch's largest count, each example's count ``[B]``) of tokens whose scorer probability
    is above ``threshold`` in (0, 1) (protected ones always: their significance is +inf; padding
    never: -inf); ``(width, None)`` where every example keeps all its tokens."""
    counts = (significance > math.log(threshold / (1 - threshold))).sum(dim=1)
    real = (torch.full_like(counts, significance.size(1)) if real_tokens is None else real_tokens.sum(dim=1))
    if bool((counts == real).all()):
        return significance.size(1), None
    return max(1, int(counts.max())), counts


def _drop_decision(keep, width) -> tuple[bool, object]:
    """(whether the layer selects tokens, how many it keeps). A concrete width decides now: drop
    only when ``keep < width``. A symbolic width (``torch.export``, e.g. the ONNX export with a
    dynamic sequence axis) cannot be compared without fixing the graph to one side, so the graph
    always selects ``min(keep, width)`` tokens: at widths <= keep that is every token in its
    original order, which gives the logits of dropping nothing. Where keep >= width holds for
    every size (e.g. a keep fraction of 1.0 on the first layer) nothing is selected."""
    if keep is None:
        return False, None
    if isinstance(width, torch.SymInt) or isinstance(keep, torch.SymInt):
        if statically_known_true(keep >= width):
            return False, keep
        return True, torch.sym_min(keep, width)
    return keep < width, keep


class BertEncoder(nn.Module):
    """The layers, run with Drop-and-Restore (the loop lives here, as in transformers' encoder)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.token_scorers = (nn.ModuleList(TokenScorer(config) for _ in range(config.num_hidden_layers))
                              if drop_criterion_of(config) == "learned" else None)

    def forward(self, hidden: torch.Tensor, real_tokens: torch.Tensor | None, *,
                options: ForwardOptions, protected: torch.Tensor | None = None,
                question: torch.Tensor | None = None, example_keep: torch.Tensor | None = None) -> EncoderOutput:
        """Run the layers with Drop-and-Restore.

        ``positions [B, n]`` maps the current tokens to input positions (None: identity).
        ``restored [B, L, H]`` holds, for tokens already dropped, their final hidden state; it is
        written when tokens are dropped and once at the end, or after every layer when all hidden
        states are requested. Every branch depends on the options and shapes only, never on
        tensor values, so a fixed configuration traces to one graph.

        ``example_keep [B, layers]`` (keep fractions resolved per example): a kept slot beyond its
        example's own count is ``frozen``, dropped for that example: from then on it is padding
        to attention and its state stays the one it had entering the layer that dropped it, the
        state a dropped token is restored with.
        """
        output_hidden_states = options.output_hidden_states
        positions = restored = frozen = None
        thresholds = options.keep_thresholds
        alive = kept_counts = None
        if thresholds is not None:  # each example's live tokens, per layer
            alive = (torch.full(hidden.shape[:1], hidden.size(1), device=hidden.device) if real_tokens is None
                     else real_tokens.sum(dim=1))
            kept_counts = []
        all_hidden = [hidden] if output_hidden_states else None
        all_probs = [] if options.output_attentions else None
        all_scores = [] if options.output_attention_scores else None
        all_scored = [] if options.output_scorer_states and self.token_scorers is not None else None
        for index, layer in enumerate(self.layer):
            if options.layers_to_run is None or index in options.layers_to_run:
                keep = None if options.length_config is None else options.length_config[index]
                scorer = None if self.token_scorers is None else self.token_scorers[index]
                threshold = None if thresholds is None or thresholds[index] == 0 else thresholds[index]
                result = layer(hidden, real_tokens, keep, options=options, scorer=scorer, protected=protected,
                               question=question,
                               example_keep=None if example_keep is None else example_keep[:, index],
                               threshold=threshold)
                if all_scored is not None:
                    all_scored.append(result.scored)
                if alive is not None and result.within is not None:
                    alive = result.within.sum(dim=1)
                layer_input = hidden
                if result.kept is not None:
                    if positions is None:  # first drop: the input already holds every final state so far
                        positions = torch.arange(hidden.size(1), device=hidden.device).expand(hidden.size(0), -1)
                        restored = hidden
                    elif not output_hidden_states:  # a dropped token's final state is its input here
                        restored = scatter_tokens(restored, positions.gather(1, result.dropped),
                                                  gather_tokens(hidden, result.dropped))
                    positions = positions.gather(1, result.kept)
                    if real_tokens is not None:
                        real_tokens = real_tokens.gather(1, result.kept)
                    if protected is not None:
                        protected = protected.gather(1, result.kept)
                    if question is not None:
                        question = question.gather(1, result.kept)
                    layer_input = gather_tokens(layer_input, result.kept)
                    if frozen is not None:
                        frozen = frozen.gather(1, result.kept)
                    if result.within is not None:
                        frozen = ~result.within if frozen is None else frozen | ~result.within
                        real_tokens = result.within if real_tokens is None else real_tokens & result.within
                hidden = result.hidden
                if frozen is not None:
                    hidden = torch.where(frozen.unsqueeze(-1), layer_input.to(hidden.dtype), hidden)
                if all_probs is not None:
                    all_probs.append(result.probs)
                if all_scores is not None:
                    all_scores.append(result.scores)
                if output_hidden_states and positions is not None:
                    restored = scatter_tokens(restored, positions, hidden)
            if kept_counts is not None:
                kept_counts.append(alive)
            if output_hidden_states:  # a skipped layer's entry equals its input
                all_hidden.append(hidden if positions is None else restored)
        if positions is not None:
            last = restored if output_hidden_states else scatter_tokens(restored, positions, hidden)
        else:
            last = hidden
        return EncoderOutput(
            last,
            tuple(all_hidden) if all_hidden is not None else None,
            tuple(all_probs) if all_probs is not None else None,
            tuple(all_scores) if all_scores is not None else None,
            None if kept_counts is None else torch.stack(kept_counts, dim=1),
            None if all_scored is None else tuple(all_scored),
        )


class BertBackbone(nn.Module):
    """Embeddings and encoder, named as transformers' ``BertModel`` (no pooler, as for QA)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)


class BertForQuestionAnswering(BertPreTrainedModel):
    """BERT with a span-prediction head and Drop-and-Restore length reduction.

    Options read from the config (saved with it, ignored by plain transformers):
      ``fit_size``: if set, adds ``fit_dense`` (TinyBERT's student->teacher projection; unused by
      :meth:`forward`). ``always_keep_cls_token`` (default False, the reference's QA default).
      ``count_padding_queries`` (default False: only real queries score significance; True
      reproduces the reference, where padded queries' attention rows count too).
    """

    config_class = BertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = False
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    _keys_to_ignore_on_load_unexpected = [r"pooler", r"^cls\.", r"fit_dense"]
    _keys_to_ignore_on_load_missing = [r"token_scorers\."]  # read from SCORERS_FILE after the weights

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertBackbone(config)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        if getattr(config, "fit_size", None):
            self.fit_dense = nn.Linear(config.hidden_size, config.fit_size)
        self.length_config: tuple[int, ...] | None = None
        self.layer_config: tuple[int, ...] = tuple(range(config.num_hidden_layers))
        self.post_init()

    def set_length_config(self, length_config: Sequence[int] | None) -> None:
        """Default length configuration for ``forward(length_config=None)``; None: full length."""
        self.length_config = self._checked_length_config(length_config)

    def set_layer_config(self, layer_config: Sequence[int] | None) -> None:
        """Default layers to run for ``forward(layer_config=None)``; None: all layers."""
        n = self.config.num_hidden_layers
        self.layer_config = tuple(range(n)) if layer_config is None else self._checked_layer_config(layer_config)

    def _checked_length_config(self, length_config):
        if length_config is None:
            return None
        return length_drop.check_length_config(
            tuple(length_config), self.config.num_hidden_layers, non_increasing=False, name="length_config")

    def _checked_keep_thresholds(self, keep_thresholds, length_config):
        if keep_thresholds is None:
            return None
        n = self.config.num_hidden_layers
        thresholds = tuple(float(t) for t in keep_thresholds)
        if len(thresholds) != n or not all(0 <= t < 1 for t in thresholds):
            raise ValueError(f"keep_thresholds: expected {n} probabilities in [0, 1), got {keep_thresholds}")
        if self.drop_criterion != "learned":
            raise ValueError("keep_thresholds: a threshold on the token scorers' probability needs the learned "
                             f"drop criterion; this model's is {self.drop_criterion!r}")
        if length_config is not None:
            raise ValueError("give keep_thresholds or length_config, not both")
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            raise ValueError("keep_thresholds: each example's count depends on its scores, which a traced or "
                             "exported graph cannot hold; use a length configuration there")
        return thresholds

    def _checked_layer_config(self, layer_config):
        layer_config = tuple(int(i) for i in layer_config)
        n = self.config.num_hidden_layers
        if any(not 0 <= i < n for i in layer_config):
            raise ValueError(f"layer_config entries must be layer indices in [0, {n}), got {layer_config}")
        return layer_config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        length_config: Sequence[int] | None = None,
        layer_config: Sequence[int] | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        output_attention_scores: bool = False,
        return_dict: bool = True,
        always_keep_cls_token: bool | None = None,
        keep_thresholds: Sequence[float] | None = None,
        output_scorer_states: bool = False,
    ) -> QAOutput | tuple:
        """Span logits for every input position. ``length_config[i]``: tokens kept by layer i,
        absolute (out of the padded length; capped at the tokens the layer receives) or a keep
        fraction of each example's own real length (``length_drop.resolve_length_config``).
        ``keep_thresholds[i]`` (learned criterion, instead of a length configuration): layer i
        keeps each example's tokens of scorer probability above it (0: keeps all); the output's
        ``kept_counts [B, layers]`` says how many each example kept. ``output_scorer_states``
        (learned criterion): the output's ``scorer_states`` holds, per executed layer, the states
        its token scorer reads (its input or its attention output), as the layer received them."""
        keep_thresholds = self._checked_keep_thresholds(keep_thresholds, length_config)
        length_config = self.length_config if length_config is None else self._checked_length_config(length_config)
        if keep_thresholds is not None:
            length_config = None
        example_keep = None
        if length_drop.is_relative(length_config):
            example_keep = example_keep_counts(length_config, attention_mask)
            length_config = length_drop.resolve_length_config(
                length_config, longest_real_length(input_ids, attention_mask))
        layer_config = self.layer_config if layer_config is None else self._checked_layer_config(layer_config)
        if always_keep_cls_token is None:
            always_keep_cls_token = bool(getattr(self.config, "always_keep_cls_token", False))

        options = ForwardOptions(
            length_config=length_config, layers_to_run=frozenset(layer_config),
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
            output_attention_scores=output_attention_scores, always_keep_cls_token=always_keep_cls_token,
            count_padding_queries=bool(getattr(self.config, "count_padding_queries", False)),
            select_before_attention=bool(getattr(self.config, "select_before_attention", False)),
            keep_thresholds=keep_thresholds, output_scorer_states=output_scorer_states)
        scorers = self.bert.encoder.token_scorers
        selects = length_config is not None or keep_thresholds is not None
        protected = (None if scorers is None or not selects else
                     protected_tokens(attention_mask, token_type_ids, input_ids))  # only selection reads it
        question = (question_tokens(attention_mask, token_type_ids, input_ids)
                    if scorers is not None and scorers[0].reads_question and selects else None)
        embeddings = self.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        encoded = self.bert.encoder(embeddings, real_tokens_of(attention_mask), options=options,
                                    protected=protected, question=question, example_keep=example_keep)

        logits = self.qa_outputs(encoded.last_hidden_state)
        start_logits, end_logits = logits.split(1, dim=-1)
        start_logits = start_logits.squeeze(-1).contiguous()
        end_logits = end_logits.squeeze(-1).contiguous()
        loss = self._span_loss(start_logits, end_logits, start_positions, end_positions)

        output = QAOutput(loss, start_logits, end_logits, encoded.hidden_states,
                          encoded.attentions, encoded.attention_scores, encoded.kept_counts, encoded.scorer_states)
        return output if return_dict else output.to_tuple()

    @property
    def drop_criterion(self) -> str:
        return drop_criterion_of(self.config)

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        """transformers' save, with the token scorers (if any) in ``SCORERS_FILE`` beside the
        weights, so ``model.safetensors`` stays a plain BERT that transformers loads cleanly."""
        from safetensors.torch import save_file

        state = self.state_dict() if state_dict is None else state_dict
        scorers = {k: v for k, v in state.items() if k.startswith(SCORERS_PREFIX)}
        backbone = {k: v for k, v in state.items() if not k.startswith(SCORERS_PREFIX)}
        result = super().save_pretrained(save_directory, *args, state_dict=backbone, **kwargs)
        if scorers:
            save_file({k: v.detach().cpu().contiguous() for k, v in scorers.items()},
                      str(Path(save_directory) / SCORERS_FILE), metadata={"format": "pt"})
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' load, then the token scorers from ``SCORERS_FILE`` when the config asks
        for them. A folder whose own config.json says ``drop_criterion: learned`` must hold the
        file; a model made learned by its caller's config (the fit stage) starts from fresh scorers,
        as it does with ``fresh_token_scorers=True`` (the fit stage of scorers of another form than
        the folder's)."""
        fresh = kwargs.pop("fresh_token_scorers", False)
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
        if model.bert.encoder.token_scorers is None:
            return loaded
        folder = Path(pretrained_model_name_or_path)
        path = folder / SCORERS_FILE
        if fresh:
            return loaded
        if path.is_file():
            from safetensors.torch import load_file

            state = load_file(str(path))
            expected = {k for k in model.state_dict() if k.startswith(SCORERS_PREFIX)}
            if set(state) != expected:
                raise ValueError(f"{path}: holds {sorted(set(state) ^ expected)[:4]} against the config's "
                                 f"{model.config.num_hidden_layers} {getattr(model.config, 'token_scorer', 'linear')} "
                                 f"token scorers")
            saved_input, asked = token_scorer_input_of(_folder_config(folder)), token_scorer_input_of(model.config)
            if saved_input != asked:
                words = {"layer_input": "input", "attention_output": "attention output"}
                raise ValueError(f"{path}: these scorers were trained on each layer's {words[saved_input]}; the "
                                 f"config asks for scorers reading its {words[asked]} (fit new ones with "
                                 f"--train_token_scorers_only, or keep the folder's token_scorer_input)")
            model.load_state_dict(state, strict=False)
        elif _folder_criterion(folder) == "learned":
            raise ValueError(f"{folder}: config.json says drop_criterion 'learned' but {SCORERS_FILE} is missing")
        return loaded

    @staticmethod
    def _span_loss(start_logits, end_logits, start_positions, end_positions):
        """Mean of start/end cross-entropy; positions outside the input are ignored (as transformers)."""
        if start_positions is None or end_positions is None:
            return None
        if start_positions.dim() > 1:
            start_positions = start_positions.squeeze(-1)
        if end_positions.dim() > 1:
            end_positions = end_positions.squeeze(-1)
        ignored_index = start_logits.size(1)
        start_positions = start_positions.clamp(0, ignored_index)
        end_positions = end_positions.clamp(0, ignored_index)
        start_loss = F.cross_entropy(start_logits, start_positions, ignore_index=ignored_index)
        end_loss = F.cross_entropy(end_logits, end_positions, ignore_index=ignored_index)
        return (start_loss + end_loss) / 2


def _folder_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _folder_criterion(folder: Path) -> str | None:
    return _folder_config(folder).get("drop_criterion")
