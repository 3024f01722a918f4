"""Length configurations for Drop-and-Restore: parsing, the LengthDrop samplers, the sandwich rule's
sub-models, and MACs (analytic and measured with torchprofile).

A configuration is one entry per layer, in one of two spaces:

* **absolute** (the paper's, LAT's): integers, tokens kept out of the padded input, e.g.
  ``[384, 300, 240]``. On a batch padded only to its longest sequence, a layer whose count exceeds
  the batch's width drops nothing.
* **relative**: keep fractions in (0, 1], e.g. ``[1.0, 0.8, 0.6]`` (JSON numbers with a decimal
  point). In each example layer i keeps ``ceil(fraction_i * n)`` tokens, n being that example's
  real length (``resolve_length_config``; the batch holds its longest example's count and masks
  the rest as padding, ``modeling_bert.example_keep_counts``); the same fraction drops the same
  share of a short sequence as of a long one, and an answer depends neither on how far the batch
  is padded nor on which questions share it.

The samplers follow the Length-Adaptive Transformer's ``drop_and_restore_utils.py`` draw for draw,
with ``rng`` (a ``random.Random``) in place of numpy's global generator.
"""
from __future__ import annotations

import json
import math
import numbers
import random
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence


def _describe(value) -> str:
    return f"{_shortened(repr(value))} ({type(value).__name__})"


def _shortened(text: str, limit: int = 120) -> str:
    """A value as shown in an error line: at most ``limit`` characters (a 40,000-entry list is
    not repeated back whole)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse_length_config(value: str | Sequence[int | float], num_hidden_layers: int,
                        max_seq_length: int) -> tuple[int, ...] | tuple[float, ...]:
    """A validated length configuration from a JSON list string or a sequence: one integer per
    layer, each in [1, max_seq_length], or one keep fraction per layer, each in (0, 1];
    non-increasing over layers (the user-facing rule of ``--length_config``). Raises ValueError
    saying what was expected and what was got."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as error:  # RecursionError: brackets nested too deep
            expected = _expected(num_hidden_layers, max_seq_length, True)
            reason = error if isinstance(error, json.JSONDecodeError) else "nested too deeply"
            raise ValueError(f"length config: expected {expected}; got unparsable "
                             f"{_shortened(repr(value))} ({reason})") from None
    config = check_length_config(value, num_hidden_layers, max_seq_length, non_increasing=True)
    if not is_relative(config) and all(entry == 1 for entry in config):
        # Integers are token counts: [1, 1, ...] keeps [CLS] alone, never what was meant.
        full = [1.0] * num_hidden_layers
        raise ValueError(f"length config: {list(config)} is token counts (integers), one token per layer; "
                         f"for full length write keep fractions, {full}")
    return config


def _expected(num_hidden_layers: int, max_seq_length: int | None, non_increasing: bool) -> str:
    bound = f"each in [1, {max_seq_length}]" if max_seq_length else "each at least 1"
    order = ", non-increasing" if non_increasing else ""
    example = [max_seq_length or 128] * num_hidden_layers
    fractions = [round(1.0 - 0.1 * i, 1) for i in range(min(num_hidden_layers, 9))]
    fractions += [fractions[-1]] * (num_hidden_layers - len(fractions))
    return (f"a JSON list of {num_hidden_layers} integers (tokens kept per layer){order}, {bound}, "
            f"e.g. {example}, or of {num_hidden_layers} keep fractions in (0, 1]{order}, e.g. {fractions}")


def is_relative(length_config) -> bool:
    """True for a configuration of keep fractions (any float entry), False for token counts."""
    return length_config is not None and any(
        isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral) for v in length_config)


# Fractions are applied in millionths with integer arithmetic, so that ceil(0.3 * 10) is 3 (not the
# 4 that float rounding gives) and the same formula works on symbolic sizes under export.
_FRACTION_UNIT = 1_000_000


def resolve_length_config(length_config, width):
    """Token counts for a batch whose longest real sequence has ``width`` tokens: a relative
    configuration keeps ``max(1, ceil(fraction * width))`` per layer; an absolute one (or None) is
    returned as it is. ``width`` may be a symbolic size (under tracing or export)."""
    if not is_relative(length_config):
        return length_config
    counts = []
    for fraction in length_config:
        units = max(1, round(fraction * _FRACTION_UNIT))  # > 0, so a layer keeps >= 1 token
        counts.append((units * width + _FRACTION_UNIT - 1) // _FRACTION_UNIT)
    return tuple(counts)


def check_length_config(value, num_hidden_layers: int, max_seq_length: int | None = None, *,
                        non_increasing: bool = True, name: str = "length config") -> tuple[int, ...]:
    """The one validator of length configurations; every caller chooses its rule:
    ``--length_config`` and the search space are non-increasing and bounded by max_seq_length;
    the model accepts any positive counts (it caps each at the tokens a layer receives, and the
    sandwich's sub-models need nothing more); stored search rows are bounded but not ordered.
    A configuration with any float entry is relative (keep fractions, each in (0, 1]).
    Returns the configuration as a tuple of ints (or of floats when relative); raises ValueError
    naming what was expected."""
    expected = _expected(num_hidden_layers, max_seq_length, non_increasing)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name}: expected {expected}; got {_describe(value)}")
    if len(value) != num_hidden_layers:
        raise ValueError(f"{name}: expected {expected}; got {len(value)} entries (a configuration for "
                         f"{len(value)} layers): {_shortened(repr(list(value)))}")
    if is_relative(value):
        kind, convert = numbers.Real, float
        outside = lambda v: not 0 < v <= 1  # noqa: E731  (also refuses nan)
        where = "a keep fraction outside (0, 1] (integers and fractions cannot be mixed)"
    else:
        kind, convert = numbers.Integral, int
        outside = lambda v: v < 1 or (max_seq_length is not None and v > max_seq_length)  # noqa: E731
        where = f"outside [1, {max_seq_length or 'inf'}]"
    entries = []
    for index, entry in enumerate(value):
        if isinstance(entry, bool) or not isinstance(entry, kind):
            raise ValueError(f"{name}: expected {expected}; entry {index} is {_describe(entry)}")
        entry = convert(entry)
        if outside(entry):
            raise ValueError(f"{name}: expected {expected}; entry {index} is {entry}, {where}")
        if non_increasing and entries and entry > entries[-1]:
            raise ValueError(f"{name}: expected {expected}; entry {index} ({entry}) is larger "
                             f"than entry {index - 1} ({entries[-1]})")
        entries.append(entry)
    return tuple(entries)


def _binomial(rng: random.Random, trials: int, prob: float) -> int:
    return sum(rng.random() < prob for _ in range(trials))


def sample_length_configuration(max_seq_length: int, num_hidden_layers: int,
                                layer_config: Sequence[int] | None = None,
                                length_drop_prob: float | None = None,
                                length_drop_ratio: float | None = None,
                                length_drop_ratio_bound: float | None = None,
                                min_length: int = 2, rng: random.Random | None = None
                                ) -> tuple[int, ...]:
    """Tokens kept per layer, as the reference: each layer in ``layer_config`` (all if None) shrinks
    the current length by, in order of precedence, a Binomial(length, length_drop_prob) count, a
    fixed ratio (``ceil(length * (1 - ratio))``), or a ratio drawn so that the new length is uniform
    on ``[ceil(length * (1 - bound)), length]``; skipped layers keep the length; never below
    ``min_length``. With no option given every layer keeps ``max_seq_length``."""
    rng = rng or random
    length = max_seq_length
    lengths = []
    for layer in range(num_hidden_layers):
        if layer_config is None or layer in layer_config:
            if length_drop_prob is not None:
                length -= _binomial(rng, length, length_drop_prob)
            elif length_drop_ratio is not None:
                length = int(math.ceil(length * (1 - length_drop_ratio)))
            elif length_drop_ratio_bound is not None:
                length = rng.randint(int(math.ceil(length * (1 - length_drop_ratio_bound))), length)
        length = max(length, min_length)
        lengths.append(length)
    return tuple(lengths)


def sample_layer_configuration(num_hidden_layers: int, layer_dropout_prob: float | None = None,
                               layer_dropout: int | None = None,
                               layer_dropout_bound: int | None = None,
                               rng: random.Random | None = None) -> tuple[int, ...]:
    """Layers to run, as the reference: each layer independently dropped with
    ``layer_dropout_prob`` (LayerDrop); else the last ``layer_dropout`` layers dropped; else the last
    ``randint(0, layer_dropout_bound)`` layers dropped (at least one layer always stays in the last
    two modes); else all layers (the reference returns None there)."""
    rng = rng or random
    if layer_dropout_prob is not None:
        return tuple(i for i in range(num_hidden_layers) if rng.random() >= layer_dropout_prob)
    if layer_dropout is not None:
        return tuple(range(num_hidden_layers - min(layer_dropout, num_hidden_layers - 1)))
    if layer_dropout_bound is not None:
        bound = min(layer_dropout_bound, num_hidden_layers - 1)
        return tuple(range(num_hidden_layers - rng.randint(0, bound)))
    return tuple(range(num_hidden_layers))


@dataclass
class SubModel:
    """One sub-model of a sandwich-rule training step."""

    kind: str                               # "full", "smallest" or "random"
    length_config: tuple[int, ...] | tuple[float, ...] | None   # None: full length
    layer_config: tuple[int, ...]


def sample_relative_length_configuration(num_hidden_layers: int, layer_config: Sequence[int] | None = None,
                                         length_drop_ratio: float | None = None,
                                         length_drop_ratio_bound: float | None = None,
                                         rng: random.Random | None = None) -> tuple[float, ...]:
    """Keep fractions per layer, LAT's ratio draws in fraction space: starting from 1.0, each layer
    in ``layer_config`` (all if None) multiplies the current fraction by ``1 - length_drop_ratio``
    or by a factor uniform on ``[1 - length_drop_ratio_bound, 1]``; skipped layers keep it.
    Fractions are rounded to 4 decimals (readable logs; far finer than a token)."""
    rng = rng or random
    fraction = 1.0
    fractions = []
    for layer in range(num_hidden_layers):
        if layer_config is None or layer in layer_config:
            if length_drop_ratio is not None:
                fraction *= 1 - length_drop_ratio
            elif length_drop_ratio_bound is not None:
                fraction *= rng.uniform(1 - length_drop_ratio_bound, 1.0)
        fractions.append(max(round(fraction, 4), 1e-4))
    return tuple(fractions)


def sample_configuration_above(smallest: Sequence[int | float], full: int | float = 1.0,
                               rng: random.Random | None = None) -> tuple:
    """A configuration between ``smallest`` and full length, layer by layer: each layer keeps an
    amount uniform between the smallest's at that layer and what the layer before kept (``full``
    before the first), so it never grows and never goes below ``smallest``. Keep fractions
    (``full`` 1.0) are rounded as ``sample_relative_length_configuration`` rounds them; token counts
    (``full`` the window) are drawn as integers."""
    rng = rng or random
    current, drawn = full, []
    for low in smallest:
        if isinstance(full, float):
            current = max(round(rng.uniform(min(low, current), current), 4), 1e-4)
        else:
            current = rng.randint(min(int(low), current), current)
        drawn.append(current)
    return tuple(drawn)


def sandwich_configurations(num_hidden_layers: int, max_seq_length: int, num_sandwich: int,
                            length_drop_ratio_bound: float, layer_dropout_prob: float | None = None,
                            layer_dropout_bound: int | None = None,
                            rng: random.Random | None = None, relative: bool = False,
                            smallest_config: Sequence[int | float] | None = None) -> list[SubModel]:
    """The sub-models of one LengthDrop training step, in the reference's order (and draw order):
    the full model (LayerDrop only if ``layer_dropout_prob``), the smallest (every layer drops
    ``length_drop_ratio_bound``; ``layer_dropout_bound`` last layers dropped), then
    ``num_sandwich`` random ones (lengths uniform within the bound, layer drop count random).
    ``relative``: sub-models get keep fractions (``sample_relative_length_configuration``), so
    they drop real tokens of short sequences too; else token counts out of ``max_seq_length``.

    ``smallest_config`` (an extension; no layer dropping): the smallest sub-model runs at that
    configuration and the random ones are drawn between it and full length
    (``sample_configuration_above``), so the sandwich trains down to a chosen target of any shape
    instead of the same drop ratio at every layer."""
    rng = rng or random
    if smallest_config is not None:
        layers = tuple(range(num_hidden_layers))
        full = 1.0 if relative else max_seq_length
        return ([SubModel("full", None, layers), SubModel("smallest", tuple(smallest_config), layers)]
                + [SubModel("random", sample_configuration_above(smallest_config, full, rng), layers)
                   for _ in range(num_sandwich)])
    full_layers = sample_layer_configuration(num_hidden_layers, layer_dropout_prob, layer_dropout=0, rng=rng)
    models = [SubModel("full", None, full_layers)]
    for index in range(num_sandwich + 1):
        smallest = index == 0
        layers = sample_layer_configuration(
            num_hidden_layers, layer_dropout_prob,
            layer_dropout=layer_dropout_bound if smallest else None,
            layer_dropout_bound=layer_dropout_bound, rng=rng)
        if relative:
            lengths = sample_relative_length_configuration(
                num_hidden_layers, layers, length_drop_ratio=length_drop_ratio_bound if smallest else None,
                length_drop_ratio_bound=length_drop_ratio_bound, rng=rng)
        else:
            lengths = sample_length_configuration(
                max_seq_length, num_hidden_layers, layers,
                length_drop_ratio=length_drop_ratio_bound if smallest else None,
                length_drop_ratio_bound=length_drop_ratio_bound, rng=rng)
        models.append(SubModel("smallest" if smallest else "random", lengths, layers))
    return models


def constant_drop_config(max_seq_length: int, num_hidden_layers: int, drop_ratio: float,
                         min_length: int = 2) -> tuple[int, ...]:
    """Every layer drops the fraction ``drop_ratio`` of the tokens it receives, cumulatively:
    ``length_i = max(ceil(length_{i-1} * (1 - drop_ratio)), min_length)``. This is LAT's sampler
    with ``length_drop_ratio``, as Dynamic-TinyBERT's ``--measure_rate`` calls it; the search's
    constant-rate sweep takes keep rates and passes ``drop_ratio = 1 - keep_rate``.
    E.g. drop 0.2 at 384 over 6 layers -> (308, 247, 198, 159, 128, 103)."""
    if not 0 <= drop_ratio < 1:
        raise ValueError(f"drop_ratio: expected a drop ratio in [0, 1), got {drop_ratio!r}")
    return sample_length_configuration(max_seq_length, num_hidden_layers, length_drop_ratio=drop_ratio,
                                       min_length=min_length)


# ---------------------------------------------------------------------------------------------
# MACs


@lru_cache(maxsize=None)
def activation_macs_per_element(hidden_act: str) -> int:
    """MACs torchprofile counts per element for an activation (its ``aten::mul`` ops: 0 for
    gelu/relu/silu, a few for the tanh-approximated GELUs)."""
    import torch
    import torchprofile
    from transformers.activations import ACT2FN

    width = 16
    # A private generator: evaluation during training must not move the global torch RNG, or a
    # resumed run would draw different dropout masks from the uninterrupted one.
    sample = torch.randn(1, width, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs = torchprofile.profile_macs(ACT2FN[hidden_act], args=(sample,))
    return int(macs) // width


def _executed_lengths(num_hidden_layers, seq_length, length_config, layer_config):
    """(layer, tokens in, tokens out) for every executed layer, as the model runs them."""
    layers = range(num_hidden_layers) if layer_config is None else sorted(set(layer_config))
    length = seq_length
    for layer in layers:
        kept = length if length_config is None else min(length, length_config[layer])
        yield layer, length, kept
        length = kept


def _scorer_macs_per_token(config) -> int:
    hidden = config.hidden_size
    kind = getattr(config, "token_scorer", "linear")
    if kind == "mlp":
        width = hidden // 4
        return hidden * width + width + activation_macs_per_element("gelu") * width
    if kind == "bilinear":  # linear, the question mean's masking product, the token's projection and
        from modeling_bert import BILINEAR_RANK  # its product with the question's
        return 2 * hidden + hidden * BILINEAR_RANK + BILINEAR_RANK
    return hidden


def _scorer_macs_per_sequence(config) -> int:
    """The bilinear scorer's question side: the projection of the question's mean state, once per
    selecting layer and sequence (the masked sum behind the mean is counted per token)."""
    if getattr(config, "token_scorer", "linear") != "bilinear":
        return 0
    from modeling_bert import BILINEAR_RANK
    return config.hidden_size * BILINEAR_RANK


def analytic_macs(config, seq_length: int, length_config: Sequence[int] | None = None,
                  layer_config: Sequence[int] | None = None) -> int:
    """MACs of one unpadded sequence through ``modeling_bert.BertForQuestionAnswering``, counted as
    torchprofile counts them: every linear layer and attention matmul, plus one MAC per element of
    each LayerNorm (affine) and the activation's multiplications; embedding look-ups, softmax,
    additions, token selection and restore count 0. Per executed layer with ``n`` tokens in and
    ``k`` kept: Q/K/V + attention output projections ``4 n H^2``, scores and context ``2 n^2 H``,
    attention LayerNorm ``n H``, feed-forward ``2 k H I`` + activation + LayerNorm ``k H``. Plus the
    embedding LayerNorm ``L H`` and the QA head ``L H num_labels`` at full length. A relative
    configuration is resolved at ``seq_length`` (the sequence is its own longest).

    Under the learned drop criterion (``config.drop_criterion``) a selecting layer (``k < n``) adds
    its scorer on ``n`` tokens (``n H`` linear; ``n (H h + h)`` for the MLP of width ``h = H / 4``),
    and with ``config.select_before_attention`` its attention runs on the ``k`` kept tokens."""
    length_config = resolve_length_config(length_config, seq_length)
    hidden, inter = config.hidden_size, config.intermediate_size
    act = activation_macs_per_element(config.hidden_act)
    learned = (getattr(config, "drop_criterion", None) or "attention") == "learned"
    before = learned and bool(getattr(config, "select_before_attention", False))
    scorer = _scorer_macs_per_token(config) if learned else 0
    per_sequence = _scorer_macs_per_sequence(config) if learned else 0
    macs = seq_length * hidden  # embedding LayerNorm
    for _, n_in, kept in _executed_lengths(config.num_hidden_layers, seq_length, length_config, layer_config):
        selects = kept < n_in
        attended = kept if before and selects else n_in
        macs += (scorer * n_in + per_sequence) if selects else 0
        macs += 4 * attended * hidden * hidden + 2 * attended * attended * hidden + attended * hidden
        macs += kept * (2 * hidden * inter + act * inter + hidden)
    macs += seq_length * hidden * config.num_labels  # QA head
    return macs


def mean_analytic_macs(config, lengths, length_config: Sequence[int | float] | None = None) -> int:
    """``analytic_macs`` averaged over sequences of the given real ``lengths``, each run unpadded
    (a relative configuration resolved at each sequence's own length; an absolute one kept at
    most that length), rounded to an integer: the cost per feature of sorted, longest-padded
    batches, less the padding up to each batch's longest."""
    counts = Counter(int(length) for length in lengths)
    if not counts:
        raise ValueError("mean_analytic_macs: no lengths")
    total = sum(count * analytic_macs(config, length, length_config) for length, count in counts.items())
    return int(round(total / sum(counts.values())))


def profile_macs(model, seq_length: int, length_config: Sequence[int] | None = None,
                 layer_config: Sequence[int] | None = None) -> int:
    """torchprofile MACs of ``model`` on a ``(1, seq_length)`` input of real tokens, traced anew for
    this configuration (set as the model's default for the trace, then restored)."""
    import torch
    import torchprofile

    saved_length, saved_layers = model.length_config, model.layer_config
    device = next(model.parameters()).device
    input_ids = torch.ones(1, seq_length, dtype=torch.long, device=device)
    was_training = model.training
    try:
        model.eval()
        model.set_length_config(length_config)
        model.set_layer_config(layer_config)
        with torch.no_grad(), warnings.catch_warnings():
            # index/sort ops have no torchprofile handler; they are 0 MACs by design
            warnings.filterwarnings("ignore", message="No handlers found")
            return int(torchprofile.profile_macs(model, args=(input_ids,)))
    finally:
        model.length_config, model.layer_config = saved_length, saved_layers
        model.train(was_training)
