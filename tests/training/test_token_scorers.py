"""The fit stage of the learned drop criterion through run_squad.py: only the token scorers
train, the backbone's weights stay the parent's to the byte, the checkpoint records the
criterion; and the flags that need the learned criterion are refused without it."""
import json

import pytest
import torch
from safetensors.torch import load_file

import run_squad
from modeling_bert import SCORERS_FILE
from helpers import TINY_SQUAD_DIR, make_tiny_tokenizer, save_tiny_bert, tiny_bert_config, tiny_squad_texts


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorers")
    tok = make_tiny_tokenizer(root / "tok", tiny_squad_texts())
    return save_tiny_bert(root / "parent", tiny_bert_config(len(tok), num_hidden_layers=3,
                                                           max_position_embeddings=256), seed=0, tokenizer=tok)


def fit_command(parent, out, *extra):
    return ["--model_name_or_path", str(parent), "--output_dir", str(out), "--data_dir", str(TINY_SQUAD_DIR),
            "--do_train", "--do_lower_case", "--max_seq_length", "128", "--doc_stride", "64",
            "--per_gpu_train_batch_size", "4", "--learning_rate", "1e-2", "--max_steps", "4",
            "--save_steps", "100", "--logging_steps", "2", "--seed", "0", "--drop_criterion", "learned",
            "--train_token_scorers_only", *extra]


@pytest.mark.parametrize("targets, scorer, reads", [("gold", "linear", "layer_input"), ("soft", "mlp", "layer_input"),
                                                    ("gold", "bilinear", "attention_output")])
def test_fit_stage_trains_the_scorers_alone(parent, tmp_path, targets, scorer, reads):
    out = tmp_path / "fit"
    assert run_squad.main(fit_command(parent, out, "--token_scorer_targets", targets,
                                      "--token_scorer", scorer, "--token_scorer_input", reads)) == 0
    last = out / "checkpoint-last"
    config = json.loads((last / "config.json").read_text())
    assert config["drop_criterion"] == "learned" and config["token_scorer"] == scorer
    assert config.get("token_scorer_input", "layer_input") == reads
    before, after = load_file(str(parent / "model.safetensors")), load_file(str(last / "model.safetensors"))
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    trained = load_file(str(last / SCORERS_FILE))
    assert len({k.split(".")[3] for k in trained}) == 3  # one scorer per layer
    # the scorers moved: the same run at learning rate 0 keeps their (same-seed) initialisation
    still = tmp_path / "still"
    assert run_squad.main(fit_command(parent, still, "--token_scorer_targets", targets, "--token_scorer", scorer,
                                      "--token_scorer_input", reads, "--learning_rate", "0")) == 0
    initial = load_file(str(still / "checkpoint-last" / SCORERS_FILE))
    assert set(initial) == set(trained) and all(not torch.equal(initial[k], trained[k]) for k in trained
                                                if k.endswith("weight"))

@pytest.mark.parametrize("extra, message", [
    (["--select_before_attention"], "--select_before_attention needs the learned drop criterion"),
    (["--train_token_scorers_only", "--do_eval"], "--train_token_scorers_only needs the learned"),
    (["--token_scorer_input", "attention_output"], "--token_scorer_input attention_output needs the learned"),
    (["--drop_criterion", "learned", "--select_before_attention", "--token_scorer_input", "attention_output"],
     "cannot go with --select_before_attention"),
])
def test_learned_only_flags_refused_without_it(parent, tmp_path, extra, message, capsys):
    argv = ["--model_name_or_path", str(parent), "--output_dir", str(tmp_path / "o"), "--data_dir",
            str(TINY_SQUAD_DIR), "--do_train", "--do_lower_case", "--max_seq_length", "128", *extra]
    assert run_squad.main(argv) == 2
    assert message in capsys.readouterr().err


def test_fit_stage_refuses_a_teacher(parent, tmp_path, capsys):
    argv = fit_command(parent, tmp_path / "o", "--teacher_model_name_or_path", str(parent), "--pred_distill")
    assert run_squad.main(argv) == 2
    assert "fits the scorers on a frozen model" in capsys.readouterr().err


def test_fit_stage_replaces_scorers_of_another_form(parent, tmp_path, capsys):
    """Fitting bilinear scorers on the attention output of a checkpoint whose scorers are linear
    on the layer input: they start untrained and the backbone stays the checkpoint's. Outside the
    fit stage the same request is refused, since the folder's scorers read something else."""
    linear = tmp_path / "linear"
    assert run_squad.main(fit_command(parent, linear)) == 0
    out = tmp_path / "bilinear"
    assert run_squad.main(fit_command(linear / "checkpoint-last", out, "--token_scorer", "bilinear",
                                      "--token_scorer_input", "attention_output")) == 0
    config = json.loads((out / "checkpoint-last" / "config.json").read_text())
    assert config["token_scorer"] == "bilinear" and config["token_scorer_input"] == "attention_output"
    scorers = load_file(str(out / "checkpoint-last" / SCORERS_FILE))
    assert any("question_projection" in k for k in scorers)
    before = load_file(str(linear / "checkpoint-last" / "model.safetensors"))
    after = load_file(str(out / "checkpoint-last" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    argv = ["--model_name_or_path", str(linear / "checkpoint-last"), "--output_dir", str(tmp_path / "eval"),
            "--data_dir", str(TINY_SQUAD_DIR), "--do_eval", "--do_lower_case", "--max_seq_length", "128",
            "--drop_criterion", "learned", "--token_scorer_input", "attention_output"]
    assert run_squad.main(argv) == 2
    assert "trained on each layer's input; the config asks for scorers reading its attention output" in capsys.readouterr().err
