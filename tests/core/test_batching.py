"""The one batching loop (``core.batching``): which windows share a batch, how wide each is, and
that every window's logits come back in its own row, checked against hand-computed plans."""
import numpy as np
import pytest
import torch

from core import batching


def windows(lengths, width=6):
    """Three model inputs of windows with the given real lengths; token i of window r is 10*r + i."""
    n = len(lengths)
    ids = np.arange(n)[:, None] * 10 + np.arange(width)[None, :]
    mask = (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    return ids * mask, mask, np.zeros_like(mask)


def test_batch_plan_sorts_longest_first_and_cuts_each_batch_to_its_longest():
    plan = batching.batch_plan([2, 5, 3, 5, 1], full_width=6, batch_size=2)
    assert [(list(i), w) for i, w in plan] == [([1, 3], 5), ([2, 0], 3), ([4], 1)]  # stable: 1 before 3


def test_batch_plan_in_file_order_padded_to_the_window():
    plan = batching.batch_plan([2, 5, 3], full_width=6, batch_size=2, pad_to_max_length=True, sort=False)
    assert [(list(i), w) for i, w in plan] == [([0, 1], 6), ([2], 6)]


def echo(input_ids, attention_mask, token_type_ids):
    """Logits that name their token: start = token id, end = -token id."""
    ids = batching.to_numpy(input_ids)
    return ids, -ids


@pytest.mark.parametrize("as_torch", [False, True])
def test_sorted_batch_logits_puts_every_window_back_in_its_row(as_torch):
    inputs = windows([2, 5, 3, 4, 1])
    if as_torch:
        inputs = tuple(torch.from_numpy(x) for x in inputs)
    out = batching.sorted_batch_logits(echo, inputs, batch_size=2)
    ids = batching.to_numpy(inputs[0])
    # Batch widths: windows 1,3 -> 5; 2,0 -> 3; 4 -> 1. Past its batch's width a row is -inf.
    widths = {1: 5, 3: 5, 2: 3, 0: 3, 4: 1}
    for row, width in widths.items():
        np.testing.assert_array_equal(out.starts[row, :width], ids[row, :width])
        np.testing.assert_array_equal(out.ends[row, :width], -ids[row, :width])
        assert np.all(out.starts[row, width:] == batching.PAST_WIDTH_LOGIT)
    assert out.starts.dtype == np.float32 and out.forward_seconds >= 0


def test_forward_sees_only_the_batch_rows_cut_to_width():
    seen = []

    def forward(input_ids, attention_mask, token_type_ids):
        seen.append(input_ids.shape)
        return np.zeros(input_ids.shape), np.zeros(input_ids.shape)

    batching.sorted_batch_logits(forward, windows([2, 5, 3, 4, 1]), batch_size=2, warm_up=True)
    assert seen == [(2, 5), (2, 5), (2, 3), (1, 1)]  # the first batch once more, untimed, for the warm-up


def test_to_numpy_of_a_bfloat16_tensor_is_float32():
    values = torch.tensor([[1.5, -2.0]], dtype=torch.bfloat16)
    out = batching.to_numpy(values)
    assert out.dtype == np.float32 and out.tolist() == [[1.5, -2.0]]
