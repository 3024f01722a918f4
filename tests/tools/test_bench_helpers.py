"""The benchmarks' own arithmetic: paired F1 differences (bench_serving) and training curves
(plot_training_curves), against hand-computed values."""
import math

import pytest
import torch

from bench import bench_serving, plot_training_curves


def test_paired_f1_difference_by_hand():
    got = bench_serving.paired_f1_difference([100.0, 0.0, 50.0, 80.0], [100.0, 100.0, 50.0, 40.0])
    diffs = [0.0, -100.0, 0.0, 40.0]  # mean -15
    mean = sum(diffs) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3)
    assert got["f1_diff"] == pytest.approx(-15.0)
    assert got["f1_diff_ci95"] == pytest.approx(1.96 * sd / 2)
    assert got["relative_f1_loss"] == pytest.approx(15.0 / 72.5)
    assert got["questions_changed"] == 2


def test_training_curves_from_eval_history():
    def entry(step, f1, tracked):
        return {"step": step, "f1": f1, "tracked": [
            {"length_config": c, "f1": v, "macs_ratio": r} for c, v, r in tracked]}
    history = [{"step": None, "f1": 1.0},  # a --do_eval entry without a step is not a training point
               entry(75, 64.3, [([1.0, 0.9], 58.9, 1.25)]),
               entry(150, 65.2, [([1.0, 0.9], 59.8, 1.25)])]
    steps, lines, ratios = plot_training_curves.curves(history)
    assert steps == [75, 150]
    assert lines == {"full length (padded eval)": [64.3, 65.2], "[1, 0.9]": [58.9, 59.8]}
    assert ratios["[1, 0.9]"] == 1.25


def test_a_run_trained_at_one_configuration_draws_its_own_evaluation_under_that_name():
    history = [{"step": 10, "f1": 44.7, "length_config": [1.0, 0.5], "macs_ratio": 2.0,
                "tracked": [{"length_config": [1.0, 1.0], "f1": 65.2, "macs_ratio": 1.0},
                            {"length_config": [1.0, 0.5], "f1": 44.7, "macs_ratio": 2.0}]},
               {"step": 20, "f1": 46.9, "length_config": [1.0, 0.5], "macs_ratio": 2.0,
                "tracked": [{"length_config": [1.0, 1.0], "f1": 59.9, "macs_ratio": 1.0},
                            {"length_config": [1.0, 0.5], "f1": 46.9, "macs_ratio": 2.0}]}]
    steps, lines, ratios = plot_training_curves.curves(history)
    assert lines == {"[1, 0.5]": [44.7, 46.9], "[1, 1]": [65.2, 59.9]}
    assert ratios["[1, 0.5]"] == 2.0 and plot_training_curves.FULL not in lines


def test_parent_levels_match_curves_by_configuration():
    rows = [{"length_config": None, "f1": 66.99}, {"length_config": [1.0, 0.9], "f1": 62.83},
            {"length_config": [1.0, 0.8], "f1": 52.16}]  # the last is not a curve: left out
    names = {"full length (padded eval)": [], "[1, 0.9]": []}
    assert plot_training_curves.parent_levels(rows, names) == {"full length (padded eval)": 66.99,
                                                               "[1, 0.9]": 62.83}


def test_later_stages_continue_the_steps_of_the_stage_before():
    first = [{"step": None, "f1": 1.0}, {"step": 75, "f1": 64.3}, {"step": 450, "f1": 66.6}]
    second = [{"step": 75, "f1": 64.2}, {"step": 150, "f1": 65.0}]
    third = [{"step": 50, "f1": 65.5}]
    entries, boundaries = plot_training_curves.chained([first, second, third])
    assert [e["step"] for e in entries] == [75, 450, 525, 600, 650]
    assert [e["f1"] for e in entries] == [64.3, 66.6, 64.2, 65.0, 65.5]
    assert boundaries == [450, 600]
    assert second[0]["step"] == 75  # the stages' own entries are left as they were
    assert plot_training_curves.chained([first]) == ([first[1], first[2]], [])


def test_rows_say_why_a_system_cannot_run_here(monkeypatch):
    """Without bfloat16 instructions the bf16 rows (transformers' and ours) say so instead of a
    number; without a calibration file so do the static int8 rows; the rest run."""
    from core import machine

    monkeypatch.setattr(machine, "cpu_flags", lambda path="/proc/cpuinfo": {"avx2", "fma"})
    rows = bench_serving.unavailable_rows(["sorted", "bf16", "bf16-autocast", "ort-int8-static"],
                                          ["torch", "bf16", "int8-static"],
                                          ["m"], [("full length", None), ("A", [1.0, 0.5])], calibration=None)
    why = {r["system"]: r["unavailable"] for r in rows}
    assert set(why) == {"transformers bf16", "transformers bf16-autocast", "transformers ort-int8-static",
                        "ours bf16, full length", "ours bf16, A", "ours int8-static, full length", "ours int8-static, A"}
    assert "no bfloat16 instructions" in why["ours bf16, A"]
    assert why["transformers ort-int8-static"] == "no --calibration_file given"
    monkeypatch.setattr(machine, "cpu_flags", lambda path="/proc/cpuinfo": {"avx512_bf16"})
    assert bench_serving.unavailable_rows(["bf16"], ["bf16"], ["m"], [("full length", None)], calibration=object()) == []


def test_f1_is_shared_only_where_the_logits_are_the_same(tmp_path):
    """Ours in float32 at full length takes transformers' F1 only on the same backbone bytes; at a
    length configuration or in another precision it answers the questions itself."""
    parent, learned, other = (tmp_path / name for name in ("parent", "learned", "other"))
    for folder, weights in ((parent, b"w1"), (learned, b"w1"), (other, b"w2")):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(weights)
    (learned / "token_scorers.safetensors").write_bytes(b"s")
    shared = bench_serving.scored_as(learned, None, "torch", ["torch"], parent, "ours torch, full length")
    assert shared == bench_serving.F1_REFERENCE
    assert bench_serving.scored_as(other, None, "torch", ["torch"], parent, "t") is None
    assert bench_serving.scored_as(learned, [1.0, 0.5], "torch", ["torch"], parent, "t") is None
    assert bench_serving.scored_as(learned, [1.0, 0.5], "onnxruntime", ["torch", "onnxruntime"], parent, "t") == "t"
    assert bench_serving.scored_as(learned, None, "bf16", ["bf16"], parent, "t") is None


def test_scorer_recall_by_hand():
    from bench import bench_scorer_recall

    class FixedScores(torch.nn.Module):  # the score is the token's first feature
        def forward(self, tokens, question):
            return tokens[:, 0]

    def feature(scores, answer):
        tokens = torch.tensor(scores, dtype=torch.float32).unsqueeze(1)
        return tokens, torch.zeros(1), torch.tensor(answer, dtype=torch.float32)

    data = [feature([0.9, 0.8, 0.1, 0.2], [0, 1, 1, 0]),  # keep 2: tokens 0, 1 -> 1 of 2 answer tokens, end lost
            feature([0.1, 0.9, 0.8, 0.0], [0, 1, 1, 0]),  # keep 2: tokens 1, 2 -> the whole answer
            feature([0.5, 0.4, 0.3, 0.2], [0, 0, 0, 0])]  # no answer in this window: not counted
    got = bench_scorer_recall.recall(FixedScores(), data, 0.5)
    assert got == {"answer_tokens_kept": 3 / 4, "answers_with_both_ends": 1 / 2, "answers": 2}
    assert bench_scorer_recall.recall(FixedScores(), data, 1.0)["answers_with_both_ends"] == 1.0


def test_scorer_recall_attention_outputs_are_what_the_feed_forward_block_reads():
    """The captured attention output of layer l, through layer l's feed-forward block, gives the
    model's hidden state after layer l: it is the tensor a layer selecting after its attention
    would score."""
    from bench import bench_scorer_recall
    from helpers import tiny_bert_config
    from modeling_bert import BertForQuestionAnswering

    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_bert_config(60, num_hidden_layers=3)).eval()
    ids = torch.randint(5, 60, (2, 12))
    captured, handles = bench_scorer_recall.attention_outputs(model)
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        for index, layer in enumerate(model.bert.encoder.layer):
            attention = captured[index]
            assert not torch.allclose(attention, hidden[index])  # not the layer's input
            torch.testing.assert_close(layer.output(layer.intermediate(attention), attention), hidden[index + 1])
    for handle in handles:
        handle.remove()
    assert not model.bert.encoder.layer[0].attention._forward_hooks


def test_each_timed_run_starts_after_the_settling_pause(monkeypatch):
    """time_systems: every timed run of every round follows a pause (the previous runtime's
    spinning threads idle by then), and warm-up runs are not timed."""
    events = []
    monkeypatch.setattr(bench_serving.time, "sleep", lambda seconds: events.append(("pause", seconds)))

    def system(name):
        return bench_serving.System(name, "ours", "sorted", "longest", lambda *inputs: events.append(("run", name)))

    systems = [system("a"), system("b")]
    batches = {"a": [bench_serving.Batch(None, ())], "b": [bench_serving.Batch(None, ())]}
    medians = bench_serving.time_systems(systems, batches, repeats=2, desc="t")
    pause = ("pause", bench_serving.SETTLE_SECONDS)
    assert events == [("run", "a"), ("run", "b")] + [pause, ("run", "a"), pause, ("run", "b")] * 2
    assert set(medians) == {"a", "b"} and all(v >= 0 for v in medians.values())


def test_earlier_scores_take_the_later_files_row_of_each_system(tmp_path):
    """--scores_from: F1 keys only (no times), by system whatever the batch size, a later file's
    row replacing an earlier one's; rows without an F1 pass or unavailable ones are skipped."""
    import json

    old = {"rows": [{"system": "a", "batch_size": 1, "f1": 60.0, "f1_diff": -1.0, "seconds": 3.0},
                    {"system": "b", "batch_size": 32, "f1": 50.0},
                    {"system": "c", "batch_size": 32, "unavailable": "no bf16"},
                    {"system": "d", "batch_size": 32, "seconds": 1.0}]}
    new = {"rows": [{"system": "b", "batch_size": 32, "f1": 55.0, "twin_f1_diff": 0.1}]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    got = bench_serving.earlier_scores([tmp_path / "old.json", tmp_path / "new.json"])
    assert got == {"a": {"f1": 60.0, "f1_diff": -1.0}, "b": {"f1": 55.0, "twin_f1_diff": 0.1}}


def test_threshold_logits_at_zero_are_full_length_with_full_length_macs():
    """bench_thresholds' forward: thresholds of 0 keep every token, so logits and MACs are full
    length's (length_drop.mean_analytic_macs over the same real lengths)."""
    import numpy as np

    import length_drop
    from bench.bench_thresholds import ThresholdLogits
    from core.forward import TorchLogits
    from helpers import tiny_bert_config
    from modeling_bert import BertForQuestionAnswering

    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_bert_config(num_hidden_layers=3, drop_criterion="learned")).eval()
    ids = torch.randint(5, 120, (3, 16))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    mask[2, 9:] = 0
    types = (torch.arange(16) >= 5).long().expand(3, -1)
    forward = ThresholdLogits(model, (0.0, 0.0, 0.0))
    got = forward(ids, mask, types)
    want = TorchLogits(model)(ids, mask, types)
    np.testing.assert_array_equal(got[0], want[0])
    assert forward.kept == [(16, (16, 16, 16)), (12, (12, 12, 12)), (9, (9, 9, 9))]
    assert forward.mean_macs(model.config) == pytest.approx(
        length_drop.mean_analytic_macs(model.config, [16, 12, 9]), rel=1e-6)
