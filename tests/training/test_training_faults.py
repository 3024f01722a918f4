"""run_squad.py's inputs checked before any work: the checkpoint a run resumes from (its
training_state.pt torn, empty or incomplete; flags its saved state cannot honour) and the model
folder's tokenizer (the same check inference.py and the API make). Each is one line naming the
file or flag and what was expected, exit 2, before the tokenizer, the model or any feature loads,
and no output folder is left behind.

References: the checkpoint's own training_args.json and training_state.pt, the model's config.json,
and the weights of the same run uninterrupted."""
import json
import shutil

import pytest
import torch

import run_squad
from training import pipeline
from helpers import TINY_SQUAD_DIR, make_tiny_tokenizer, save_tiny_bert, tiny_bert_config, tiny_squad_texts

TRAIN = ["--do_train", "--max_steps", "2", "--save_steps", "1", "--logging_steps", "0",
         "--per_gpu_train_batch_size", "4", "--learning_rate", "1e-3"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The shipped tiny data, a tiny 2-layer model, and a checkpoint of two training steps."""
    root = tmp_path_factory.mktemp("training_faults")
    squad = root / "squad"
    shutil.copytree(TINY_SQUAD_DIR, squad, ignore=shutil.ignore_patterns("cached_*"))
    tok = make_tiny_tokenizer(root / "tok", tiny_squad_texts())
    model = save_tiny_bert(root / "model", tiny_bert_config(len(tok), num_hidden_layers=2,
                                                             max_position_embeddings=512), seed=0, tokenizer=tok)
    ws = {"squad": squad, "root": root, "model": model, "tokens": len(tok)}
    assert run_squad.main(argv(ws, root / "run", *TRAIN)) == 0
    ws["checkpoint"] = root / "run" / "checkpoint-1"
    return ws


def argv(ws, out, *extra, model=None):
    return [str(a) for a in ["--data_dir", ws["squad"], "--model_name_or_path", model or ws["model"],
                             "--output_dir", out, "--max_seq_length", "128", "--doc_stride", "32", "--do_lower_case",
                             *extra]]


@pytest.fixture
def nothing_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("work was done before the inputs were checked")
    monkeypatch.setattr(pipeline, "load_tokenizer", refuse)
    monkeypatch.setattr(pipeline, "load_student_and_teacher", refuse)


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("run_squad.py: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def copy_checkpoint(ws, tmp_path):
    folder = tmp_path / "checkpoint-1"
    shutil.copytree(ws["checkpoint"], folder)
    return folder


# ---- a torn, empty or incomplete training_state.pt ------------------------------------------------

def break_state(folder, how: str):
    path = folder / run_squad.TRAINING_STATE
    state = torch.load(path, map_location="cpu", weights_only=True)
    if how == "torn":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "no_optimizer":
        torch.save({k: v for k, v in state.items() if k != "optimizer"}, path)
    elif how == "no_rng_numpy":
        torch.save({**state, "rng": {k: v for k, v in state["rng"].items() if k != "numpy"}}, path)
    elif how == "not_a_dict":
        torch.save([1, 2, 3], path)


@pytest.mark.parametrize("how, words", [("torn", "cannot be read"), ("empty", "is empty"),
                                        ("no_optimizer", "no 'optimizer'"), ("no_rng_numpy", "no 'rng.numpy'"),
                                        ("not_a_dict", "not a training state")])
def test_a_broken_training_state_is_one_line_before_any_work(ws, tmp_path, capsys, nothing_loads, how, words):
    folder = copy_checkpoint(ws, tmp_path)
    break_state(folder, how)
    out = tmp_path / "out"
    assert run_squad.main(argv(ws, out, *TRAIN, "--resume_from_checkpoint", folder)) == 2
    line = error_line(capsys)
    assert f"--resume_from_checkpoint: {folder / run_squad.TRAINING_STATE}" in line and words in line, line
    assert "checkpoint-" in line and not out.exists()


def test_a_checkpoint_without_training_args_is_refused(ws, tmp_path, capsys, nothing_loads):
    folder = copy_checkpoint(ws, tmp_path)
    (folder / "training_args.json").unlink()
    assert run_squad.main(argv(ws, tmp_path / "out", *TRAIN, "--resume_from_checkpoint", folder)) == 2
    line = error_line(capsys)
    assert f"--resume_from_checkpoint {folder}" in line and "no training_args.json" in line, line


# ---- flags a resumed run cannot honour: one rule ---------------------------------------------------

@pytest.mark.parametrize("flag, value", [("--learning_rate", "2e-3"), ("--weight_decay", "0.1"),
                                         ("--adam_epsilon", "1e-6"), ("--seed", "7"),
                                         ("--per_gpu_train_batch_size", "2"),
                                         ("--gradient_accumulation_steps", "2"), ("--group_by_length", None)])
def test_resume_refuses_flags_its_saved_state_fixes(ws, tmp_path, capsys, nothing_loads, flag, value):
    recorded = json.loads((ws["checkpoint"] / "training_args.json").read_text())[flag[2:]]
    given = [flag] if value is None else [flag, value]
    flags = [f for f in TRAIN if f not in ("--learning_rate", "1e-3")] if flag == "--learning_rate" else TRAIN
    if flag == "--per_gpu_train_batch_size":
        flags = TRAIN[:TRAIN.index(flag)] + TRAIN[TRAIN.index(flag) + 2:]
    out = tmp_path / "out"
    assert run_squad.main(argv(ws, out, *flags, *given, "--resume_from_checkpoint", ws["checkpoint"])) == 2
    line = error_line(capsys)
    shown = "true" if value is None else json.dumps(type(recorded)(value))  # the flag as parsed
    assert f"{flag} {shown}" in line and str(ws["checkpoint"]) in line, line
    assert json.dumps(recorded) in line and "training_state.pt" in line, line
    assert not out.exists()


def test_a_resume_with_the_checkpoints_flags_equals_the_uninterrupted_run(ws, tmp_path):
    """The flags it applies (here --max_steps) are taken and recorded; the run still ends where the
    uninterrupted one did."""
    from safetensors.torch import load_file

    out = tmp_path / "resumed"
    assert run_squad.main(argv(ws, out, *TRAIN, "--resume_from_checkpoint", ws["checkpoint"])) == 0
    a = load_file(ws["root"] / "run" / "checkpoint-2" / "model.safetensors")
    b = load_file(out / "checkpoint-last" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    longer = [*TRAIN[:2], "3", *TRAIN[3:]]
    assert run_squad.main(argv(ws, tmp_path / "longer", *longer, "--resume_from_checkpoint", ws["checkpoint"])) == 0
    recorded = json.loads((tmp_path / "longer" / "checkpoint-last" / "training_args.json").read_text())
    assert recorded["max_steps"] == 3
    state = torch.load(tmp_path / "longer" / "checkpoint-last" / run_squad.TRAINING_STATE, weights_only=True)
    assert state["global_step"] == 3


# ---- the tokenizer: the check inference.py makes --------------------------------------------------

def test_run_squad_refuses_a_tokenizer_larger_than_the_embeddings(ws, tmp_path, capsys, nothing_loads):
    tok = make_tiny_tokenizer(tmp_path / "tok", tiny_squad_texts())
    short = save_tiny_bert(tmp_path / "short", tiny_bert_config(len(tok) - 10, num_hidden_layers=2,
                                                                max_position_embeddings=512), tokenizer=tok)
    assert run_squad.main(argv(ws, tmp_path / "out", "--do_eval", model=short)) == 2
    line = error_line(capsys)
    assert str(short / "tokenizer.json") in line and f"{len(tok)} tokens" in line, line
    assert f"vocab_size {len(tok) - 10}" in line and not (tmp_path / "out").exists()


def test_run_squad_refuses_a_tokenizer_config_that_is_not_an_object(ws, tmp_path, capsys, nothing_loads):
    model = tmp_path / "model"
    shutil.copytree(ws["model"], model)
    (model / "tokenizer_config.json").write_text("[]")
    assert run_squad.main(argv(ws, tmp_path / "out", "--do_eval", model=model)) == 2
    line = error_line(capsys)
    assert str(model / "tokenizer_config.json") in line and "must hold a JSON object, got list" in line, line
