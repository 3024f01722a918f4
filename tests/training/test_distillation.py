"""Each loss term of distillation.py against values computed by hand."""
import math

import pytest
import torch

from training import distillation as D


def test_soft_cross_entropy_hand_computed():
    student = torch.tensor([[0.0, math.log(2.0)]])  # probs 1/3, 2/3
    teacher = torch.tensor([[0.0, 0.0]])             # probs 1/2, 1/2
    expected = -(0.5 * math.log(1 / 3) + 0.5 * math.log(2 / 3))
    assert D.soft_cross_entropy(student, teacher).item() == pytest.approx(expected, abs=1e-6)


def test_soft_cross_entropy_temperature_and_batch_mean():
    student = torch.tensor([[0.0, 4.0], [2.0, 0.0]])
    teacher = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    T = 2.0

    def ce(s, t):
        ps = [math.exp(x / T) for x in s]
        pt = [math.exp(x / T) for x in t]
        ps = [x / sum(ps) for x in ps]
        pt = [x / sum(pt) for x in pt]
        return -sum(b * math.log(a) for a, b in zip(ps, pt))

    expected = (ce([0, 4], [0, 2]) + ce([2, 0], [0, 0])) / 2
    assert D.soft_cross_entropy(student, teacher, T).item() == pytest.approx(expected, abs=1e-6)


def test_prediction_loss_of_identical_student_is_at_its_minimum():
    """A student identical to its teacher: the KL part is zero, so the loss equals the teacher's
    entropy and its gradient with respect to the student's logits is zero."""
    torch.manual_seed(0)
    teacher_start, teacher_end = torch.randn(3, 7), torch.randn(3, 7)
    s_start = teacher_start.clone().requires_grad_(True)
    s_end = teacher_end.clone().requires_grad_(True)
    loss = D.prediction_distillation_loss(s_start, s_end, teacher_start, teacher_end)
    loss.backward()

    def entropy(logits):
        p = torch.softmax(logits, -1)
        return -(p * p.log()).sum(-1).mean()

    assert loss.item() == pytest.approx(((entropy(teacher_start) + entropy(teacher_end)) / 2).item(), abs=1e-6)
    assert s_start.grad.abs().max().item() < 1e-7
    assert s_end.grad.abs().max().item() < 1e-7


def test_layer_mapping():
    assert D.hidden_state_pairs(2, 4) == [(0, 0), (1, 2), (2, 4)]
    assert D.attention_pairs(2, 4) == [(0, 1), (1, 3)]
    assert D.hidden_state_pairs(6, 12) == [(j, 2 * j) for j in range(7)]
    assert D.attention_pairs(4, 12) == [(0, 2), (1, 5), (2, 8), (3, 11)]
    with pytest.raises(ValueError, match="multiple"):
        D.layers_per_block(3, 4)


def test_hidden_state_loss_hand_computed_and_fit_dense():
    # Student 2 layers, teacher 4 layers: pairs (0,0), (1,2), (2,4).
    student = [torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[3.0, 0.0]]])]
    teacher = [torch.zeros(1, 1, 2) for _ in range(5)]
    teacher[2] = torch.tensor([[[1.0, 1.0]]])
    teacher[1] = torch.tensor([[[100.0, 100.0]]])  # unmapped, must not count
    expected = (1 + 4) / 2 + (1 + 1) / 2 + (9 + 0) / 2
    assert D.hidden_state_loss(student, teacher).item() == pytest.approx(expected)

    fit = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        fit.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    teacher3 = [torch.zeros(1, 1, 3) for _ in range(5)]
    # fit(s) = (a, b, a+b); MSE to zero = (a^2 + b^2 + (a+b)^2) / 3
    expected = (1 + 4 + 9) / 3 + 0 + (9 + 0 + 9) / 3
    assert D.hidden_state_loss(student, teacher3, fit).item() == pytest.approx(expected)


def test_attention_loss_masks_padding_and_both_forms():
    # One layer each (k = 1); [batch, heads, query, key].
    student = [torch.tensor([[[[-1e4, 1.0], [2.0, 2.0]]]])]
    teacher = [torch.tensor([[[[-3e38, 3.0], [2.0, 0.0]]]])]
    # masked scores become 0: differences (0, -2) and (0, 2) -> MSE = (0 + 4 + 0 + 4) / 4
    assert D.attention_loss(student, teacher, use_mse=True).item() == pytest.approx(2.0)
    # cosine per query row: row 1 (0,1)·(0,3) -> 1; row 2 (2,2)·(2,0) -> 1/sqrt(2)
    expected = 1 - (1 + 1 / math.sqrt(2)) / 2
    assert D.attention_loss(student, teacher, use_mse=False).item() == pytest.approx(expected, abs=1e-6)


def test_intermediate_loss_of_identical_student_is_zero():
    torch.manual_seed(1)
    hidden = [torch.randn(2, 5, 8) for _ in range(3)]
    scores = [torch.randn(2, 4, 5, 5) for _ in range(2)]
    scores[0][:, :, :, -1] = torch.finfo(torch.float32).min  # a padded key
    assert D.hidden_state_loss(hidden, hidden).item() == 0.0
    assert D.attention_loss(scores, scores, use_mse=True).item() == 0.0
    assert D.attention_loss(scores, scores, use_mse=False).item() == pytest.approx(0.0, abs=1e-6)


def test_inplace_distillation_direction_hand_computed():
    full = torch.tensor([[0.0, 0.0]])                      # p_full = (1/2, 1/2)
    sub = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)  # p_sub = (1/4, 3/4)
    p_sub, p_full = [0.25, 0.75], [0.5, 0.5]
    kl_sub_full = sum(a * math.log(a / b) for a, b in zip(p_sub, p_full))
    kl_full_sub = sum(b * math.log(b / a) for a, b in zip(p_sub, p_full))
    assert kl_sub_full != pytest.approx(kl_full_sub)
    ref = D.inplace_distillation_loss(sub, sub, full, full, reference_direction=True)
    conv = D.inplace_distillation_loss(sub, sub, full, full, reference_direction=False)
    assert ref.item() == pytest.approx(kl_sub_full, abs=1e-6)
    assert conv.item() == pytest.approx(kl_full_sub, abs=1e-6)
    # The reference form equals torch's KLDivLoss with the full model as "input" (its swapped roles).
    kldiv = torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(full, -1), torch.softmax(sub, -1))
    assert ref.item() == pytest.approx(kldiv.item(), abs=1e-6)


def test_inplace_distillation_gradient_reaches_only_the_sub_model():
    full = torch.randn(2, 6, requires_grad=True)
    sub = torch.randn(2, 6, requires_grad=True)
    D.inplace_distillation_loss(sub, sub, full, full).backward()
    assert full.grad is None
    assert sub.grad.abs().sum() > 0
