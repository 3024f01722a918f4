"""length_drop: parsing, the LengthDrop samplers against hand-derived expectations, the sandwich
rule, and analytic MACs against torchprofile (on our model and on transformers' own)."""
from __future__ import annotations

import random
import statistics
import warnings

import pytest
import torch
import transformers
from helpers import tiny_bert_config

from length_drop import (
    SubModel,
    analytic_macs,
    constant_drop_config,
    parse_length_config,
    profile_macs,
    sample_configuration_above,
    sample_layer_configuration,
    sample_length_configuration,
    sandwich_configurations,
)
from modeling_bert import BertForQuestionAnswering


# ---------------------------------------------------------------------------------------------
# parse_length_config


def test_parse_accepts_json_and_sequences():
    assert parse_length_config("[384, 320, 256, 192, 160, 128]", 6, 384) == (384, 320, 256, 192, 160, 128)
    assert parse_length_config((5, 5, 1), 3, 5) == (5, 5, 1)
    assert parse_length_config([7, 3], 2, 7) == (7, 3)


@pytest.mark.parametrize(
    "value, message",
    [
        ("[384, 320", "unparsable"),
        ("__import__('os')", "unparsable"),
        ('{"a": 1}', "dict"),
        ("384", "int"),
        ('"384"', "str"),
        ("[384, 320]", "got 2 entries"),
        ("[384, 320, true]", "bool"),
        ("[384, 320.0, 256]", "cannot be mixed"),
        ("[1.0, 0.5, 1.5]", "outside \\(0, 1\\]"),
        ("[1.0, 0.5, 0.0]", "outside \\(0, 1\\]"),
        ("[1.0, 0.5, 0.6]", "larger than entry 1"),
        ('[384, "320", 256]', "str"),
        ("[384, null, 256]", "NoneType"),
        ("[384, 320, 330]", "larger than entry 1"),
        ("[384, 320, 0]", "outside \\[1, 384\\]"),
        ("[385, 320, 256]", "outside \\[1, 384\\]"),
        ("[384, 320, -1]", "outside"),
    ],
)
def test_parse_rejects_bad_input_with_a_clear_message(value, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_length_config(value, 3, 384)
    assert "expected a JSON list of 3 integers" in str(error.value)


# ---------------------------------------------------------------------------------------------
# samplers


def test_fixed_ratio_is_cumulative_ceil_and_skipped_layers_keep_length():
    # 384 * 0.8 = 307.2 -> 308; 246.4 -> 247; 197.6 -> 198; 158.4 -> 159; 127.2 -> 128; 102.4 -> 103
    assert sample_length_configuration(384, 6, length_drop_ratio=0.2) == (308, 247, 198, 159, 128, 103)
    assert constant_drop_config(384, 6, 0.2) == (308, 247, 198, 159, 128, 103)
    assert sample_length_configuration(384, 6, layer_config=(0, 2, 4), length_drop_ratio=0.2) == \
        (308, 308, 247, 247, 198, 198)
    # min_length floors the length: 10 -> 1 -> clamp 2 -> ceil(0.2) = 1 -> 2 ...
    assert sample_length_configuration(10, 3, length_drop_ratio=0.9) == (2, 2, 2)
    assert sample_length_configuration(10, 3, length_drop_ratio=0.9, min_length=1) == (1, 1, 1)
    assert sample_length_configuration(384, 3) == (384, 384, 384)


def test_ratio_bound_draws_uniform_lengths_within_the_bound():
    rng = random.Random(0)
    samples = [sample_length_configuration(384, 6, length_drop_ratio_bound=0.2, rng=rng) for _ in range(4000)]
    first = [s[0] for s in samples]
    # uniform on [ceil(384 * 0.8), 384] = [308, 384]: mean 346, variance (77^2 - 1) / 12 = 494
    assert min(first) == 308 and max(first) == 384
    assert abs(statistics.mean(first) - 346) < 1.5
    assert abs(statistics.variance(first) - (77 ** 2 - 1) / 12) < 40
    for s in samples:
        assert all(b <= a for a, b in zip(s, s[1:]))
        assert all(int(-(-a * 0.8 // 1)) <= b for a, b in zip(s, s[1:]))  # each step within the bound
    # E[length_i] = E[length_{i-1}] * (1 - 0.1) roughly (continuous approximation)
    sixth = statistics.mean(s[5] for s in samples)
    assert abs(sixth - 384 * 0.9 ** 6) < 0.02 * 384 * 0.9 ** 6


def test_length_drop_prob_is_binomial_and_takes_precedence():
    rng = random.Random(1)
    samples = [sample_length_configuration(200, 2, length_drop_prob=0.25, length_drop_ratio=0.9, rng=rng)
               for _ in range(2000)]
    first = [s[0] for s in samples]
    assert abs(statistics.mean(first) - 150) < 1.0            # 200 * (1 - 0.25)
    assert abs(statistics.variance(first) - 37.5) < 5          # 200 * 0.25 * 0.75
    assert abs(statistics.mean(s[1] for s in samples) - 112.5) < 1.0


def test_samplers_are_deterministic_given_rng():
    a = sample_length_configuration(384, 6, length_drop_ratio_bound=0.3, rng=random.Random(5))
    b = sample_length_configuration(384, 6, length_drop_ratio_bound=0.3, rng=random.Random(5))
    assert a == b
    # The bound sampler uses one randint per layer, from the top of the range down.
    rng, expected, length = random.Random(5), [], 384
    for _ in range(6):
        length = max(rng.randint(-(-length * 7 // 10), length), 2)
        expected.append(length)
    assert a == tuple(expected)


def test_layer_sampler_modes():
    rng = random.Random(2)
    draws = [sample_layer_configuration(6, layer_dropout_prob=0.3, rng=rng) for _ in range(3000)]
    for layer in range(6):
        kept = sum(layer in d for d in draws) / len(draws)
        assert abs(kept - 0.7) < 0.03
    assert sample_layer_configuration(6, layer_dropout=2) == (0, 1, 2, 3)
    assert sample_layer_configuration(6, layer_dropout=10) == (0,)      # at least one layer stays
    assert sample_layer_configuration(6) == tuple(range(6))
    counts = [6 - len(sample_layer_configuration(6, layer_dropout_bound=2, rng=rng)) for _ in range(3000)]
    assert set(counts) == {0, 1, 2}
    assert all(abs(counts.count(k) / 3000 - 1 / 3) < 0.03 for k in range(3))
    # prob takes precedence over a fixed count, as in the reference
    assert len(sample_layer_configuration(6, layer_dropout_prob=0.0, layer_dropout=3)) == 6


def test_sandwich_configurations_order_and_content():
    models = sandwich_configurations(6, 384, num_sandwich=2, length_drop_ratio_bound=0.2,
                                     layer_dropout_bound=2, rng=random.Random(3))
    assert [m.kind for m in models] == ["full", "smallest", "random", "random"]
    assert models[0] == SubModel("full", None, tuple(range(6)))
    # smallest: last 2 layers dropped, every executed layer drops 20%, skipped ones keep length
    assert models[1] == SubModel("smallest", (308, 247, 198, 159, 159, 159), (0, 1, 2, 3))
    # random ones: draw order is layer count then one length per executed layer
    rng = random.Random(3)
    for model in models[2:]:
        layers = tuple(range(6 - rng.randint(0, 2)))
        assert model.layer_config == layers
        length, lengths = 384, []
        for layer in range(6):
            if layer in layers:
                length = rng.randint(-(-length * 8 // 10), length)
            lengths.append(length)
        assert model.length_config == tuple(lengths)


def test_sandwich_with_layerdrop_prob_drops_layers_in_every_sub_model():
    rng = random.Random(4)
    runs = [sandwich_configurations(6, 128, 2, 0.2, layer_dropout_prob=0.5, rng=rng) for _ in range(300)]
    for position in range(4):
        sizes = [len(run[position].layer_config) for run in runs]
        assert abs(statistics.mean(sizes) - 3.0) < 0.3


def test_constant_drop_rejects_bad_ratio():
    with pytest.raises(ValueError, match="drop ratio"):
        constant_drop_config(384, 6, 1.0)


# ---------------------------------------------------------------------------------------------
# MACs


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_analytic_macs_agree_with_torchprofile(hidden_act):
    config = tiny_bert_config(num_hidden_layers=4, hidden_size=32, intermediate_size=40, hidden_act=hidden_act)
    torch.manual_seed(0)
    model = BertForQuestionAnswering(config)
    cases = [
        (None, None),
        ((100, 100, 100, 100), None),
        ((90, 70, 50, 30), None),
        ((90, 70, 50, 30), (0, 2, 3)),
        ((60, 60, 20, 20), (1, 3)),
        ((2, 2, 2, 2), None),
    ]
    for length_config, layer_config in cases:
        want = profile_macs(model, 100, length_config, layer_config)
        got = analytic_macs(config, 100, length_config, layer_config)
        assert abs(got - want) <= 0.01 * want, (length_config, layer_config, got, want)
    # profiling restores the model's own defaults
    assert model.length_config is None and model.layer_config == tuple(range(4))


def test_analytic_macs_equal_torchprofile_on_transformers_model():
    """Independent check of the formula at full length: transformers' own SDPA model."""
    import torchprofile

    config = tiny_bert_config(num_hidden_layers=3, hidden_size=48, num_attention_heads=4, intermediate_size=64)
    config._attn_implementation = "sdpa"
    model = transformers.BertForQuestionAnswering(config).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = torchprofile.profile_macs(model, args=(torch.ones(1, 77, dtype=torch.long),))
    assert analytic_macs(config, 77) == want


def test_analytic_macs_hand_count():
    config = tiny_bert_config(num_hidden_layers=2, hidden_size=8, num_attention_heads=2, intermediate_size=16)
    # layer 0: 10 tokens in, 6 kept; layer 1: 6 in, 6 kept
    layer0 = 4 * 10 * 64 + 2 * 100 * 8 + 10 * 8 + 6 * (2 * 8 * 16 + 8)
    layer1 = 4 * 6 * 64 + 2 * 36 * 8 + 6 * 8 + 6 * (2 * 8 * 16 + 8)
    assert analytic_macs(config, 10, (6, 6)) == 10 * 8 + layer0 + layer1 + 10 * 8 * 2
    # a skipped layer costs nothing
    assert analytic_macs(config, 10, (6, 6), layer_config=(0,)) == 10 * 8 + layer0 + 10 * 8 * 2


def test_one_validator_with_each_callers_rule():
    """check_length_config is the one validator: strict for --length_config, lenient (any
    positive counts, any order, no upper bound) for the model, bounded but unordered for rows."""
    from length_drop import check_length_config

    assert check_length_config([500, 600, 1], 3, None, non_increasing=False) == (500, 600, 1)
    assert check_length_config((40, 41, 10), 3, 41, non_increasing=False) == (40, 41, 10)
    with pytest.raises(ValueError, match="larger than entry 0"):
        check_length_config([40, 41, 10], 3, 41)
    with pytest.raises(ValueError, match=r"outside \[1, 40\]"):
        check_length_config([40, 41, 10], 3, 40, non_increasing=False)
    with pytest.raises(ValueError, match=r"length_config: .* entry 2 is 0"):
        check_length_config([3, 2, 0], 3, None, non_increasing=False, name="length_config")
    with pytest.raises(ValueError, match="got 2 entries"):
        check_length_config([3, 2], 3)


def test_relative_configurations_resolve_by_ceiling_in_exact_arithmetic():
    from length_drop import is_relative, resolve_length_config

    assert resolve_length_config((1.0, 0.3, 0.25, 0.01), 10) == (10, 3, 3, 1)  # 0.3*10 is 3, not ceil(3.0000000000000004)
    assert resolve_length_config((384, 200), 10) == (384, 200)  # absolute: unchanged
    assert is_relative((1.0, 0.5)) and is_relative((1, 0.5)) and not is_relative((1, 1))
    assert parse_length_config("[1, 0.8, 0.5]", 3, 384) == (1.0, 0.8, 0.5)


def test_all_ones_in_integers_is_refused_with_the_fractions_to_write():
    # [1, 1, 1] reads as token counts (one token per layer), never as full length.
    with pytest.raises(ValueError, match=r"one token per layer; for full length write keep fractions, \[1.0, 1.0, 1.0\]"):
        parse_length_config("[1, 1, 1]", 3, 384)
    assert parse_length_config("[1.0, 1.0, 1.0]", 3, 384) == (1.0, 1.0, 1.0)
    assert parse_length_config("[2, 1, 1]", 3, 384) == (2, 1, 1)


def test_relative_sandwich_draws_fractions_within_the_bound():
    rng = random.Random(0)
    for _ in range(50):
        models = sandwich_configurations(4, 384, 2, 0.2, rng=rng, relative=True)
        assert models[0].length_config is None
        smallest = models[1].length_config
        assert smallest == pytest.approx([0.8, 0.64, 0.512, 0.4096], abs=1e-4)
        for sub in models[2:]:
            previous = 1.0
            for fraction in sub.length_config:
                assert previous * 0.8 - 1e-4 <= fraction <= previous + 1e-4
                previous = fraction
    config = tiny_bert_config(50, num_hidden_layers=2)
    # MACs of a relative configuration: those of its token counts at the sequence's own length.
    assert analytic_macs(config, 20, (1.0, 0.5)) == analytic_macs(config, 20, (20, 10))


def test_sandwich_trains_down_to_a_given_smallest_configuration():
    """--smallest_length_config: the smallest sub-model is that configuration, every layer runs,
    and each random one lies layer by layer between it and what its previous layer kept."""
    smallest = (1.0, 0.55, 0.4, 0.3, 0.25, 0.2)
    rng = random.Random(0)
    drawn = []
    for _ in range(400):
        models = sandwich_configurations(6, 256, 2, 0.2, rng=rng, relative=True, smallest_config=smallest)
        assert [m.kind for m in models] == ["full", "smallest", "random", "random"]
        assert all(m.layer_config == tuple(range(6)) for m in models)
        assert models[0].length_config is None and models[1].length_config == smallest
        for sub in models[2:]:
            previous = 1.0
            for low, fraction in zip(smallest, sub.length_config):
                assert low - 1e-4 <= fraction <= previous + 1e-4
                previous = fraction
            drawn.append(sub.length_config)
    # Layer 0 is pinned at 1.0; layer 1 is uniform on [0.55, 1] (mean 0.775, sd 0.13 / sqrt(800)).
    assert all(config[0] == 1.0 for config in drawn)
    assert statistics.mean(c[1] for c in drawn) == pytest.approx(0.775, abs=0.015)
    assert min(c[5] for c in drawn) < 0.25 and max(c[5] for c in drawn) > 0.6  # the whole range is drawn


def test_configuration_above_in_token_counts():
    rng = random.Random(1)
    for _ in range(200):
        counts = sample_configuration_above((200, 120, 60), 256, rng)
        assert all(isinstance(c, int) for c in counts)
        assert 200 <= counts[0] <= 256 and 120 <= counts[1] <= counts[0] and 60 <= counts[2] <= counts[1]
    assert sample_configuration_above((256, 256), 256, rng) == (256, 256)
