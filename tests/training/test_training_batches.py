"""Training batches cut to their longest real sequence (--train_padding longest), grouped by
length (--group_by_length), and the robustness configurations tracked during training."""
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

import run_squad
import length_drop
from training.objective import Objective, mask_padding_logits, sub_models_for_step
from training.runtime import Runtime
from training.settings import ObjectiveSettings, SandwichSettings, group_from
from training.loop import length_grouped_batches, train_step, trim_to_longest
from core.errors import UsageError
from helpers import TINY_SQUAD_DIR, make_tiny_tokenizer, save_tiny_bert, tiny_bert_config, tiny_squad_texts

WIDTH = 24
REAL = [24, 17, 9, 13]  # real tokens per row: the longest fills the padded width in one case only


def padded_batch(real=REAL, width=WIDTH, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(real)
    input_ids = torch.randint(5, 50, (n, width), generator=g)
    attention_mask = (torch.arange(width)[None, :] < torch.tensor(real)[:, None]).long()
    input_ids = input_ids * attention_mask  # [PAD] = 0 past each row's real tokens
    token_type_ids = (torch.arange(width)[None, :] >= 4).long() * attention_mask
    starts = torch.tensor([min(5, r - 1) for r in real])
    ends = torch.tensor([min(7, r - 1) for r in real])
    return input_ids, attention_mask, token_type_ids, starts, ends


def parse(*argv):
    return run_squad.build_parser().parse_args(["--model_name_or_path", "x", "--output_dir", "y", *argv])


def test_masked_span_loss_is_cross_entropy_over_each_rows_real_tokens():
    """The span loss after mask_padding_logits equals, row by row, a cross-entropy computed on
    that row's real positions alone (hand-sliced)."""
    torch.manual_seed(0)
    input_ids, attention_mask, _, starts, ends = padded_batch()
    start_logits, end_logits = torch.randn(len(REAL), WIDTH), torch.randn(len(REAL), WIDTH)
    from modeling_bert import QAOutput

    masked = mask_padding_logits(QAOutput(None, start_logits, end_logits), attention_mask, starts, ends)
    want = []
    for i, r in enumerate(REAL):
        s = F.cross_entropy(start_logits[i, :r][None], starts[i:i + 1])
        e = F.cross_entropy(end_logits[i, :r][None], ends[i:i + 1])
        want.append((s + e) / 2)
    assert masked.loss.item() == pytest.approx(torch.stack(want).mean().item(), rel=1e-6)


@pytest.mark.parametrize("step", ["span", "pred_distill", "relative_sandwich"])
def test_trimmed_batch_gives_the_padded_batchs_losses_and_gradients(step):
    """Step 1 (span loss), step 3 (prediction distillation) and a relative-space step 4 give the
    same loss terms and gradients on a batch padded to max_seq_length and on the same batch cut to
    its longest real sequence, when the span softmaxes run over real tokens (the point of
    --train_padding longest). Without that masking they differ (padded logits enter the softmax)."""
    from modeling_bert import BertForQuestionAnswering

    flags = {"span": [], "pred_distill": ["--pred_distill", "--teacher_model_name_or_path", "t"],
             "relative_sandwich": ["--pred_distill", "--teacher_model_name_or_path", "t", "--length_adaptive",
                                   "--length_space", "relative", "--sandwich_full_weight", "0.5"]}[step]
    args = parse("--max_seq_length", str(WIDTH), *flags)
    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_bert_config(50, num_hidden_layers=3)).eval()  # no dropout
    teacher = BertForQuestionAnswering(tiny_bert_config(50, num_hidden_layers=3)).eval() if flags else None
    sandwich = group_from(SandwichSettings, args, length_config=None)
    import random
    subs = sub_models_for_step(sandwich, 3, random.Random(3))
    if step == "relative_sandwich":
        assert len(subs) == 4 and length_drop.is_relative(subs[1].length_config)
    runtime = Runtime(torch.device("cpu"))
    batch = padded_batch()
    trimmed = trim_to_longest(batch)
    assert trimmed[0].shape[1] == max(REAL)

    def run(b, real_tokens_only):
        model.zero_grad(set_to_none=True)
        objective = Objective(group_from(ObjectiveSettings, args), teacher, real_tokens_only=real_tokens_only)
        terms = train_step("fp32", sandwich, model, objective, b, subs, 1.0, runtime, None, True)
        return terms, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    padded_terms, padded_grads = run(batch, True)
    trimmed_terms, trimmed_grads = run(trimmed, True)
    assert padded_terms.keys() == trimmed_terms.keys()
    for k in padded_terms:
        assert trimmed_terms[k] == pytest.approx(padded_terms[k], rel=1e-5, abs=1e-7), k
    for n, g in padded_grads.items():
        torch.testing.assert_close(trimmed_grads[n], g, rtol=1e-4, atol=1e-6)
    reference_terms, _ = run(batch, False)  # the reference's maths: padded logits in the softmax
    assert reference_terms["loss"] != pytest.approx(padded_terms["loss"], rel=1e-4)


def test_length_grouped_batches_are_a_partition_sorted_within_megabatches():
    lengths = torch.randint(10, 257, (1000,), generator=torch.Generator().manual_seed(1))
    indices = torch.randperm(1000, generator=torch.Generator().manual_seed(2))
    batch_size = 4  # megabatches of 200 indices

    def batches(seed):
        return length_grouped_batches(indices, lengths, batch_size, torch.Generator().manual_seed(seed))

    got = batches(0)
    assert sorted(torch.cat(got).tolist()) == list(range(1000))
    assert all(len(b) == batch_size for b in got)
    assert [b.tolist() for b in batches(0)] == [b.tolist() for b in got]      # fixed by the generator
    assert [b.tolist() for b in batches(1)] != [b.tolist() for b in got]      # another epoch, another order
    for b in got:  # each batch is a run of its megabatch sorted longest first
        mega = indices[(indices == b[0]).nonzero().item() // 200 * 200:][:200]
        ranked = mega[torch.argsort(-lengths[mega], stable=True)].tolist()
        start = ranked.index(b[0].item())
        assert ranked[start:start + batch_size] == b.tolist()
    # grouping is what makes cutting to the longest pay: padding per batch falls several-fold
    waste = lambda bs: sum((lengths[b].max() - lengths[b]).sum().item() for b in bs)  # noqa: E731
    assert waste(got) * 5 < waste(list(indices.split(batch_size)))


def test_train_padding_longest_is_refused_with_the_step2_losses(tmp_path):
    from training.settings import check_train_padding

    assert check_train_padding(parse("--train_padding", "longest", "--pred_distill")) == "longest"
    assert check_train_padding(parse()) == "max_length"  # the reference's layout by default
    with pytest.raises(UsageError, match="--train_padding longest: the hidden-state and attention"):
        check_train_padding(parse("--train_padding", "longest", "--state_loss_ratio", "1"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    shutil.copytree(TINY_SQUAD_DIR, root / "squad")
    tok = make_tiny_tokenizer(root / "tok", tiny_squad_texts())
    model = save_tiny_bert(root / "model", tiny_bert_config(len(tok), num_hidden_layers=3, hidden_size=32,
                                                            max_position_embeddings=512), seed=0, tokenizer=tok)
    return root, model


TRACKED = [[1.0, 0.8, 0.6], [1.0, 0.5, 0.25]]


def common(root, model, out):
    return ["--data_dir", str(root / "squad"), "--model_name_or_path", str(model), "--output_dir", str(out),
            "--max_seq_length", "128", "--doc_stride", "32", "--per_gpu_eval_batch_size", "4", "--threads", "1"]


def test_tracked_configurations_match_a_separate_evaluation(tiny, tmp_path):
    """Each tracked configuration's F1 in eval_results.json equals --do_eval of the final
    checkpoint at that configuration, run separately."""
    root, model = tiny
    out = tmp_path / "train"
    argv = common(root, model, out) + [
        "--do_train", "--evaluate_during_training", "--max_steps", "4", "--logging_steps", "2",
        "--learning_rate", "1e-3", "--per_gpu_train_batch_size", "4", "--length_adaptive",
        "--length_space", "relative", "--train_padding", "longest", "--group_by_length",
        "--track_length_configs", json.dumps(TRACKED)]
    assert run_squad.main(argv) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert [e["step"] for e in results["history"]] == [2, 4]
    assert [t["length_config"] for t in results["tracked"]] == TRACKED
    for config, tracked in zip(TRACKED, results["tracked"]):
        alone = tmp_path / f"eval-{config[-1]}"
        assert run_squad.main(common(root, out / "checkpoint-last", alone)
                              + ["--do_eval", "--length_config", json.dumps(config)]) == 0
        separate = json.loads((alone / "eval_results.json").read_text())
        assert tracked["f1"] == pytest.approx(separate["f1"], abs=1e-9)
        assert tracked["macs_ratio"] == pytest.approx(separate["macs_ratio"])


@pytest.mark.parametrize("value, message", [
    ("[[1.0, 0.8]]", "entry 0: length config: expected a JSON list of 3"),
    ("[1.0, 0.8, 0.6]", "entry 0: length config: expected"),
    ("not json", "not JSON"),
    ("[]", "non-empty JSON list"),
])
def test_bad_track_length_configs_are_one_line_errors(tiny, tmp_path, capsys, value, message):
    root, model = tiny
    argv = common(root, model, tmp_path / "out") + ["--do_train", "--evaluate_during_training",
                                                    "--track_length_configs", value]
    assert run_squad.main(argv) == 2
    err = capsys.readouterr().err
    assert "--track_length_configs" in err and message in err
    assert not (tmp_path / "out").exists()


def test_track_length_configs_needs_evaluation_during_training(tiny, tmp_path, capsys):
    root, model = tiny
    argv = common(root, model, tmp_path / "out") + ["--do_train", "--track_length_configs", json.dumps(TRACKED)]
    assert run_squad.main(argv) == 2
    assert "--evaluate_during_training" in capsys.readouterr().err
