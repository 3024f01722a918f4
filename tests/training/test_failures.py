"""Issue 9: faults found by fault injection. Bad inputs, kills at bad moments, a full disk, torn
files and several searches in one folder: nothing measured is lost, nothing wrong is reused, and
every bad input is one clear line with a non-zero exit."""
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from training import checkpoints
from core import files
import length_drop
from training import pipeline
import run_squad
import search
import utils_squad
from helpers import (REPO_ROOT, TINY_SQUAD_DIR, make_tiny_tokenizer, save_tiny_bert, subprocess_env, tiny_bert_config,
                     tiny_squad_texts)
from search_helpers import SyntheticTask, config_of, constant_rate_config, make_args, read_csv


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The shipped tiny data, a tiny tokenizer and two different tiny 2-layer models."""
    root = tmp_path_factory.mktemp("faults")
    squad = root / "squad"
    shutil.copytree(TINY_SQUAD_DIR, squad, ignore=shutil.ignore_patterns("cached_*"))
    tok = make_tiny_tokenizer(root / "tok", tiny_squad_texts())
    config = tiny_bert_config(len(tok), num_hidden_layers=2, max_position_embeddings=512)
    return {"squad": squad, "root": root, "tok": tok,
            "model": save_tiny_bert(root / "model_a", config, seed=0, tokenizer=tok),
            "other": save_tiny_bert(root / "model_b", config, seed=1, tokenizer=tok)}


def argv(ws, out, *extra, model=None):
    return [str(a) for a in ["--data_dir", ws["squad"], "--model_name_or_path", model or ws["model"],
                             "--output_dir", out, "--max_seq_length", "128", "--doc_stride", "32", "--do_lower_case",
                             *extra]]


def main(args) -> int:
    return run_squad.main(args)


def error_line(capsys) -> str:
    """The one error line on stderr (log lines aside, no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("run_squad.py: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def hidden_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


SEARCH = ("--do_search", "--search_backend", "constant", "--search_rates", "1.0,0.8",
          "--overwrite_output_dir")


# --- 1. a search never reuses rows measured on something else -----------------------------------

def test_search_refuses_rows_of_another_model_and_restarts_on_request(ws, tmp_path, capsys):
    """run-sigopt-search.sh always passes --overwrite_output_dir into one folder: searching a
    second model there must not report the first model's F1."""
    out = tmp_path / "search"
    assert main(argv(ws, out, *SEARCH)) == 0
    first_csv = (out / "search_results.csv").read_bytes()
    capsys.readouterr()
    assert main(argv(ws, out, *SEARCH, model=ws["other"])) == 2
    line = error_line(capsys)
    assert "weights_sha256" in line and "--search_restart" in line and "--output_dir" in line
    assert (out / "search_results.csv").read_bytes() == first_csv

    assert main(argv(ws, out, *SEARCH, "--search_restart", model=ws["other"])) == 0
    (previous,) = out.glob("previous_search_*")
    assert (previous / "search_results.csv").read_bytes() == first_csv  # moved aside, not deleted
    full = next(r for r in read_csv(out / "search_results.csv") if r["backend"] == "full")
    assert main(argv(ws, tmp_path / "eval", "--do_eval", model=ws["other"])) == 0
    expected = json.loads((tmp_path / "eval" / "eval_results.json").read_text())["f1"]
    assert float(full["f1"]) == pytest.approx(expected)
    first_full = next(r for r in read_csv(previous / "search_results.csv") if r["backend"] == "full")
    assert float(first_full["f1"]) != pytest.approx(expected)  # the two models do differ


@pytest.mark.parametrize("change", ["subset", "layers", "caller", "no_record"])
def test_search_reuses_rows_only_when_everything_matches(tmp_path, change):
    task = SyntheticTask(3, 40)
    common = ["--search_backend", "constant", "--search_min_length", "6", "--search_rates", "1.0,0.8"]
    search.run_search_from_args(make_args(*common), task, 3, 40, task.full_macs, tmp_path,
                                measured_on={"weights_sha256": "a" * 64, "predict_file_sha256": "b" * 64})
    before = (tmp_path / "search_results.csv").read_bytes()
    layers, extra, measured_on = 3, [], {"weights_sha256": "a" * 64, "predict_file_sha256": "b" * 64}
    if change == "subset":
        extra, key = ["--search_subset", "5"], "search_subset"
    elif change == "layers":
        layers, key = 4, "num_hidden_layers"
    elif change == "caller":
        measured_on["predict_file_sha256"], key = "c" * 64, "predict_file_sha256"
    else:
        (tmp_path / search.META_JSON).unlink()
        key = search.META_JSON
    task = SyntheticTask(layers, 40)
    with pytest.raises(ValueError, match=key) as info:
        search.run_search_from_args(make_args(*common, *extra), task, layers, 40, task.full_macs, tmp_path,
                                    measured_on=measured_on)
    assert "--search_restart" in str(info.value)
    assert task.calls == []
    assert (tmp_path / "search_results.csv").read_bytes() == before


# --- 2. several searches in one folder ------------------------------------------------------------

def test_two_stores_on_one_csv_keep_every_row(tmp_path):
    """Worker B opened the CSV before worker A appended; A's final rewrite must not wipe B's row,
    and the two rows get different trial numbers."""
    path = tmp_path / "search_results.csv"
    a, b = search.ResultStore(path), search.ResultStore(path)
    row = lambda config: {"trial": 0, "backend": "optuna", "length_config": config, "macs": 10,  # noqa: E731
                          "macs_ratio": 1.0, "f1": 50.0, "exact_match": 40.0, "eval_seconds": 0.1,
                          "questions": 15, "pareto": None}
    a.append(row((30, 20)))
    b.append(row((25, 25)))
    a.rewrite()
    rows = read_csv(path)
    assert sorted(config_of(r) for r in rows) == [(25, 25), (30, 20)]
    assert sorted(int(r["trial"]) for r in rows) == [0, 1]


WORKER = textwrap.dedent("""
    import json, pathlib, sys, time
    import search
    from search_helpers import SyntheticTask, make_args

    class SlowTask(SyntheticTask):  # evaluations take a while, so the two workers overlap
        def __call__(self, config):
            time.sleep(0.02)
            return SyntheticTask.__call__(self, config)

    task = SlowTask(4, 48)
    ready = pathlib.Path(sys.argv[4] + ".ready")
    ready.touch()
    while len(list(ready.parent.glob("*.ready"))) < 2:  # start together
        time.sleep(0.01)
    args = make_args("--search_backend", "evolution", "--search_budget", "25", "--search_min_length", "8",
                     "--population_size", "6", "--mutation_size", "4", "--crossover_size", "4",
                     "--search_seed", sys.argv[3])
    try:
        search.run_search_from_args(args, task, 4, 48, task.full_macs, sys.argv[2])
    finally:
        json.dump(task.calls, open(sys.argv[4], "w"))
""")


def test_two_search_processes_in_one_folder_lose_no_row(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "shared"
    env = subprocess_env(OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(REPO_ROOT), str(out), str(seed),
                               str(tmp_path / f"calls{seed}.json")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for seed in (1, 2)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    measured = [tuple(c) for seed in (1, 2) for c in json.loads((tmp_path / f"calls{seed}.json").read_text())]
    rows = read_csv(out / "search_results.csv")
    configs = [config_of(r) for r in rows]
    assert set(configs) == set(measured)  # every measured row survived
    assert len(configs) == len(set(configs))  # and none twice
    assert len({r["trial"] for r in rows}) == len(rows)
    front = search.pareto_flags([(float(r["f1"]), float(r["macs"])) for r in rows])
    assert [r["pareto"] == "1" for r in rows] == front  # flags over both workers' rows


# --- 3. resume is exact with evaluation during training --------------------------------------------

def test_resume_with_evaluation_during_training_ends_with_the_same_weights(ws, tmp_path):
    common = ["--do_train", "--evaluate_during_training", "--max_steps", "6", "--save_steps", "3",
              "--logging_steps", "2", "--per_gpu_train_batch_size", "4", "--learning_rate", "1e-3",
              "--length_adaptive", "--num_sandwich", "1", "--layer_dropout_prob", "0.3",
              "--overwrite_output_dir"]
    length_drop.activation_macs_per_element.cache_clear()  # as in a fresh process
    assert main(argv(ws, tmp_path / "full", *common)) == 0
    length_drop.activation_macs_per_element.cache_clear()
    assert main(argv(ws, tmp_path / "resumed", *common,
                     "--resume_from_checkpoint", tmp_path / "full" / "checkpoint-3")) == 0
    from safetensors.torch import load_file
    a = load_file(tmp_path / "full" / "checkpoint-6" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "checkpoint-last" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_macs_counting_leaves_the_global_rng_alone():
    length_drop.activation_macs_per_element.cache_clear()
    before = torch.get_rng_state()
    length_drop.activation_macs_per_element("gelu_new")
    assert torch.equal(torch.get_rng_state(), before)


# --- 4. checkpoint-best records its own F1 ----------------------------------------------------------

def test_checkpoint_best_stores_the_f1_it_was_saved_for(ws, tmp_path):
    out = tmp_path / "o"
    assert main(argv(ws, out, "--do_train", "--evaluate_during_training", "--logging_steps", "1",
                     "--max_steps", "4", "--learning_rate", "3e-3", "--per_gpu_train_batch_size", "4")) == 0
    history = json.loads((out / "eval_results.json").read_text())["history"]
    best_f1 = max(e["f1"] for e in history)
    best = json.loads((out / "checkpoint-best" / checkpoints.CHECKPOINT_INFO).read_text())
    last = torch.load(out / "checkpoint-last" / run_squad.TRAINING_STATE, weights_only=True)
    assert best["best_f1"] == pytest.approx(best_f1)
    best_step = next(e["step"] for e in history if e["f1"] == best_f1)
    assert best["global_step"] == best_step
    assert last["best_f1"] == pytest.approx(best_f1)
    # --save_training_state resume (the default): checkpoint-best carries no optimizer state
    assert not (out / "checkpoint-best" / run_squad.TRAINING_STATE).exists()


@pytest.mark.parametrize("retention, kept", [("resume", {"checkpoint-last", "checkpoint-2"}),
                                             ("all", {"checkpoint-best", "checkpoint-last", "checkpoint-2"}),
                                             ("none", set())])
def test_save_training_state_chooses_the_checkpoints_that_keep_it(ws, tmp_path, retention, kept):
    out = tmp_path / "o"
    assert main(argv(ws, out, "--do_train", "--evaluate_during_training", "--logging_steps", "2",
                     "--save_steps", "2", "--max_steps", "2", "--save_training_state", retention)) == 0
    folders = {p.parent.name for p in out.glob("*/" + run_squad.TRAINING_STATE)}
    assert folders == kept
    assert (out / "checkpoint-last" / checkpoints.CHECKPOINT_INFO).is_file()


def test_checkpoint_files_follow_the_umask(ws, tmp_path):
    out = tmp_path / "o"
    old = os.umask(0o022)
    try:
        assert main(argv(ws, out, "--do_train", "--max_steps", "1")) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (out / "checkpoint-last").iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}


# --- 6. the checkpoint swap, and failed saves -------------------------------------------------------

KILLER = textwrap.dedent("""
    import os, sys
    import run_squad
    real, swaps = os.replace, []

    def replace(src, dst):
        # kill -9 between the two renames of the second save of checkpoint-last
        if os.path.basename(str(dst)) == "checkpoint-last" and ".tmp-" in os.path.basename(str(src)):
            swaps.append(src)
            if len(swaps) == 2:
                os._exit(137)
        return real(src, dst)

    os.replace = replace
    sys.exit(run_squad.main(sys.argv[2:]))
""")


def test_a_kill_between_the_checkpoint_renames_is_recovered(ws, tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    out = tmp_path / "o"
    common = ["--do_train", "--save_steps", "1", "--logging_steps", "0", "--per_gpu_train_batch_size", "4",
              "--save_only_best", "--overwrite_output_dir"]
    proc = subprocess.run([sys.executable, str(script), str(REPO_ROOT), *argv(ws, out, *common, "--max_steps", "3")],
                          capture_output=True, text=True, timeout=300, env=subprocess_env(OMP_NUM_THREADS="1"))
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert not (out / "checkpoint-last").exists()
    assert len(hidden_folders(out)) == 2  # .checkpoint-last.old-PID (step 1), .tmp-PID (step 2)

    assert main(argv(ws, out, *common, "--max_steps", "3",
                     "--resume_from_checkpoint", out / "checkpoint-last")) == 0
    assert hidden_folders(out) == []
    state = torch.load(out / "checkpoint-last" / run_squad.TRAINING_STATE, weights_only=True)
    assert state["global_step"] == 3
    args = json.loads((out / "checkpoint-last" / "training_args.json").read_text())
    assert args["resume_from_checkpoint"] == str(out / "checkpoint-last")


def test_recovery_keeps_the_newest_complete_copy_and_removes_the_rest(tmp_path):
    for name in (".checkpoint-last.old-999999", ".checkpoint-last.tmp-999999", ".checkpoint-7.tmp-999998",
                 "checkpoint-best", ".checkpoint-best.tmp-999997"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "marker").write_text(name)
    checkpoints.recover_checkpoints(tmp_path)
    assert (tmp_path / "checkpoint-last" / "marker").read_text() == ".checkpoint-last.tmp-999999"
    assert (tmp_path / "checkpoint-best" / "marker").read_text() == "checkpoint-best"
    assert not (tmp_path / "checkpoint-7").exists()  # an unfinished first save
    assert hidden_folders(tmp_path) == []


# --- 7. a full disk -------------------------------------------------------------------------------

@pytest.mark.parametrize("failure", ["enospc", "torch_unexpected_pos"])
def test_a_full_disk_during_a_checkpoint_says_so_and_keeps_the_previous_one(ws, tmp_path, monkeypatch, capsys,
                                                                           failure):
    out = tmp_path / "o"
    common = ["--do_train", "--logging_steps", "0", "--per_gpu_train_batch_size", "4", "--overwrite_output_dir"]
    assert main(argv(ws, out, *common, "--max_steps", "1")) == 0
    before = (out / "checkpoint-last" / "model.safetensors").read_bytes()
    real_save = torch.save

    def full_disk(obj, path, *a, **k):
        real_save(obj, path, *a, **k)  # a partial file is written, then the write fails
        if failure == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 1472 vs 1360")

    monkeypatch.setattr(torch, "save", full_disk)
    if failure == "torch_unexpected_pos":
        monkeypatch.setattr(files, "free_bytes", lambda path: 0)
    capsys.readouterr()
    assert main(argv(ws, out, *common, "--max_steps", "2")) == 1
    line = error_line(capsys)
    assert f"no space left on {out}" in line and "checkpoint-last is kept" in line
    assert (out / "checkpoint-last" / "model.safetensors").read_bytes() == before
    assert hidden_folders(out) == []


def test_a_full_disk_stops_the_optuna_search_and_keeps_the_rows(tmp_path, monkeypatch):
    task = SyntheticTask(3, 40)
    real_fsync, real_call = os.fsync, task.__call__
    state = {"full": False}

    def fsync(fd):
        if state["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    class FillingTask(SyntheticTask):
        def __call__(self, config):
            if len(self.calls) == 1:  # the disk fills up after the full-length row
                state["full"] = True
            return SyntheticTask.__call__(self, config)

    task = FillingTask(3, 40)
    monkeypatch.setattr(os, "fsync", fsync)
    args = make_args("--search_backend", "optuna", "--search_budget", "10", "--search_min_length", "6",
                     "--search_rates", "1.0")
    with pytest.raises(utils_squad.DiskFullError, match=f"no space left on {tmp_path}"):
        search.run_search_from_args(args, task, 3, 40, task.full_macs, tmp_path)
    assert len(task.calls) == 2  # stopped at the first row it could not store
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert [config_of(r) for r in read_csv(tmp_path / "search_results.csv")] == [(40, 40, 40)]


def test_sqlite_full_disk_behind_optunas_assertion_is_recognised(tmp_path, monkeypatch):
    import sqlite3

    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError:
            raise AssertionError("Should not reach.")
    except AssertionError as err:
        assert files.is_disk_full(err, tmp_path)
    plain = AssertionError("Should not reach.")
    assert not files.is_disk_full(plain, tmp_path)  # this disk has room
    monkeypatch.setattr(files, "free_bytes", lambda path: 0)
    assert files.is_disk_full(plain, tmp_path)
    assert not files.is_disk_full(KeyboardInterrupt(), tmp_path)


# --- 8. torn and malformed CSV rows --------------------------------------------------------------

def test_a_torn_last_row_that_still_parses_is_measured_again(tmp_path):
    task = SyntheticTask(3, 40)
    args = make_args("--search_backend", "constant", "--search_min_length", "6", "--search_rates", "1.0,0.8,0.6")
    path = search.run_search_from_args(args, task, 3, 40, task.full_macs, tmp_path)
    text = path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    assert last.endswith(",50,0") or last.endswith(",50,1")
    path.write_text(text.rstrip("\n")[:-3])  # "...,50,0" cut to "...,5": still a valid row
    task.calls.clear()
    search.run_search_from_args(args, task, 3, 40, task.full_macs, tmp_path)
    assert task.calls == [constant_rate_config(40, 3, 0.6)]
    assert all(int(r["questions"]) == 50 for r in read_csv(path))


@pytest.mark.parametrize("config, words", [([40, 40], "2 layers"), ([40, 41, 10], "outside"),
                                           ([40, 0, 0], "outside")])
def test_a_row_that_does_not_fit_the_model_is_an_error(tmp_path, config, words):
    task = SyntheticTask(3, 40)
    args = make_args("--search_backend", "constant", "--search_min_length", "6", "--search_rates", "1.0")
    path = search.run_search_from_args(args, task, 3, 40, task.full_macs, tmp_path)
    path.write_text(path.read_text() + f'7,constant,"{config}",10,1.0,5.0,4.0,0.1,50,0\n')
    with pytest.raises(ValueError, match=f"line 3: malformed row.*{words}"):
        search.run_search_from_args(args, task, 3, 40, task.full_macs, tmp_path)


# --- 9-11. clear errors -----------------------------------------------------------------------------

def break_model(ws, folder: Path, how: str) -> Path:
    shutil.copytree(ws["model"], folder)
    weights = folder / "model.safetensors"
    if how == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:-200])
    elif how == "garbage_weights":
        weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    elif how == "no_weights":
        weights.unlink()
    elif how == "bad_config":
        (folder / "config.json").write_text('{"model_type": "bert", ')
    elif how == "empty_folder":
        shutil.rmtree(folder)
        folder.mkdir()
    return folder


@pytest.mark.parametrize("how, words", [
    ("truncated_weights", "model.safetensors is truncated or corrupt"),
    ("garbage_weights", "model.safetensors is truncated or corrupt"),
    ("no_weights", "no weights file"),
    ("bad_config", "config.json is not a valid JSON file"),
    ("empty_folder", "no config.json"),
])
def test_a_broken_model_folder_is_one_line_naming_the_file(ws, tmp_path, capsys, how, words):
    model = break_model(ws, tmp_path / "model", how)
    assert main(argv(ws, tmp_path / "out", "--do_eval", model=model)) == 2
    line = error_line(capsys)
    assert words in line and str(model) in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["is_a_file", "under_a_file", "read_only"])
def test_a_bad_output_dir_is_refused_before_the_model_loads(ws, tmp_path, capsys, monkeypatch, case):
    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded before --output_dir was checked")

    monkeypatch.setattr(pipeline, "load_tokenizer", must_not_load)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = {"is_a_file": blocker, "under_a_file": blocker / "out", "read_only": tmp_path / "ro"}[case]
    if case == "read_only":
        out.mkdir()
        out.chmod(0o555)
    try:
        assert main(argv(ws, out, "--do_eval")) == 2
        line = error_line(capsys)
        assert "--output_dir" in line and {"is_a_file": "is a file", "under_a_file": "which is a file",
                                           "read_only": "is not writable"}[case] in line
    finally:
        if case == "read_only":
            out.chmod(0o755)


def test_empty_training_data_is_an_error_before_training(ws, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(ws["squad"], data)
    (data / "empty.json").write_text(json.dumps({"version": "1.1", "data": []}))
    args = argv(ws, tmp_path / "out", "--do_train", "--train_file", "empty.json", "--max_steps", "1")
    args[args.index("--data_dir") + 1] = str(data)
    assert main(args) == 2
    assert "no training questions" in error_line(capsys)
    assert not (tmp_path / "out").exists()
    assert main(argv(ws, tmp_path / "out", "--do_train", "--max_train_questions", "0")) == 2
    assert "--max_train_questions" in error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--state_loss_ratio", "--att_loss_ratio"])
def test_a_negative_loss_ratio_is_an_error(ws, tmp_path, capsys, flag):
    assert main(argv(ws, tmp_path / "out", "--do_train", "--teacher_model_name_or_path", ws["other"],
                     "--pred_distill", flag, "-1")) == 2
    assert flag in error_line(capsys)


def test_a_failed_run_leaves_no_empty_output_folder(ws, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "dev-v1.1.json").write_text('{"version": "1.1", "data": [')  # fails after the model loads
    args = argv(ws, tmp_path / "out", "--do_eval")
    args[args.index("--data_dir") + 1] = str(data)
    assert main(args) == 2
    assert "dev-v1.1.json" in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_eval_does_not_overwrite_another_runs_predictions(ws, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.json").write_text('{"q1": "an earlier answer"}')
    assert main(argv(ws, out, "--do_eval")) == 2
    assert "--overwrite_output_dir" in error_line(capsys)
    assert (out / "predictions.json").read_text() == '{"q1": "an earlier answer"}'
    assert main(argv(ws, out, "--do_eval", "--overwrite_output_dir")) == 0
    assert len(json.loads((out / "predictions.json").read_text())) == 15


def test_sigopt_errors_are_one_line_with_exit_code_2(ws, tmp_path, capsys, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("SIGOPT_API_TOKEN", "t")
    monkeypatch.setenv("SIGOPT_API_URL", f"http://127.0.0.1:{port}")
    assert main(argv(ws, tmp_path / "out", "--do_search", "--search_backend", "sigopt",
                     "--search_rates", "1.0", "--search_min_length", "32")) == 2
    assert "cannot reach the SigOpt API" in error_line(capsys)
