"""run_squad.py end to end: the paper's four training commands as written, learning, resume,
the sandwich's gradient accumulation, and every up-front error."""
import csv
import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch

import run_squad
from core.models import load_model
from training.objective import Objective, sandwich_weight, sub_models_for_step
from training.runtime import Runtime
from training.settings import ObjectiveSettings, SandwichSettings, build_settings, group_from
from training.loop import train_step
from helpers import TINY_SQUAD_DIR, make_tiny_tokenizer, save_tiny_bert, tiny_bert_config, tiny_squad_texts

# The paper README's commands, verbatim but for line breaks.
STEP1 = """--data_dir $SQUAD_DIR --model_type bert --model_name_or_path bert-base-uncased
--do_train --do_eval --evaluate_during_training --save_only_best --do_lower_case
--train_file train-v1.1.json --predict_file dev-v1.1.json --per_gpu_train_batch_size 8
--per_gpu_eval_batch_size 32 --learning_rate 3e-5 --num_train_epochs 2 --max_seq_length 384
--doc_stride 128 --overwrite_output_dir --output_dir $OUTPUT_DIR/fintuned_bert"""
STEP2 = """--data_dir $SQUAD_DIR --model_type bert --model_name_or_path $GENERAL_TINYBERT_DIR
--teacher_model_type bert --teacher_model_name_or_path $OUTPUT_DIR/fintuned_bert/checkpoint-best
--do_train --evaluate_during_training --save_only_best --do_lower_case --per_gpu_train_batch_size 16
--per_gpu_eval_batch_size 16 --learning_rate 5e-5 --num_train_epochs 20 --max_seq_length 384
--doc_stride 128 --gradient_accumulation_steps 1 --state_loss_ratio 1.0 --att_loss_ratio 1.0 --att_mse
--overwrite_output_dir --output_dir $OUTPUT_DIR/intermediate"""
STEP3 = """--data_dir $SQUAD_DIR --model_type bert --model_name_or_path $OUTPUT_DIR/intermediate/checkpoint-last
--teacher_model_type bert --teacher_model_name_or_path $OUTPUT_DIR/fintuned_bert/checkpoint-best
--do_train --evaluate_during_training --save_only_best --do_lower_case --per_gpu_train_batch_size 16
--per_gpu_eval_batch_size 16 --learning_rate 3e-5 --num_train_epochs 10 --max_seq_length 384
--doc_stride 128 --gradient_accumulation_steps 1 --state_loss_ratio 0.0 --att_loss_ratio 0.0 --pred_distill
--overwrite_output_dir --output_dir $OUTPUT_DIR/dynamic_tinybert"""
STEP4 = """--data_dir $SQUAD_DIR --model_type bert --model_name_or_path $OUTPUT_DIR/dynamic_tinybert/checkpoint-best
--teacher_model_type bert --teacher_model_name_or_path $OUTPUT_DIR/fintuned_bert/checkpoint-best
--do_train --evaluate_during_training --save_only_best --do_lower_case --per_gpu_train_batch_size 16
--per_gpu_eval_batch_size 16 --learning_rate 2e-5 --num_train_epochs 10 --max_seq_length 384
--doc_stride 128 --gradient_accumulation_steps 1 --state_loss_ratio 0.0 --att_loss_ratio 0.0 --pred_distill
--length_adaptive --num_sandwich 2 --length_drop_ratio_bound 0.2 --layer_dropout_prob 0.2
--overwrite_output_dir --output_dir $OUTPUT_DIR/dynamic_tinybert_ld_naive"""


def command(template: str, env: dict, *extra: str) -> list[str]:
    for key in sorted(env, key=len, reverse=True):
        template = template.replace("$" + key, str(env[key]))
    return shlex.split(template) + list(extra)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """$SQUAD_DIR with the shipped tiny data, a tiny tokenizer, a 4-layer 'bert-base-uncased'
    stand-in and a 2-layer 'General TinyBERT' (narrower: fit_dense is needed)."""
    root = tmp_path_factory.mktemp("paper")
    squad = root / "squad"
    shutil.copytree(TINY_SQUAD_DIR, squad)
    tok = make_tiny_tokenizer(root / "tok", tiny_squad_texts())
    teacher = save_tiny_bert(root / "bert-base-uncased",
                             tiny_bert_config(len(tok), num_hidden_layers=4, hidden_size=32,
                                              max_position_embeddings=512), seed=0, tokenizer=tok)
    student = save_tiny_bert(root / "general_tinybert",
                             tiny_bert_config(len(tok), num_hidden_layers=2, hidden_size=24,
                                              intermediate_size=48, max_position_embeddings=512),
                             seed=1, tokenizer=tok)
    return {"SQUAD_DIR": squad, "OUTPUT_DIR": root / "out", "GENERAL_TINYBERT_DIR": student,
            "root": root, "teacher": teacher, "tok": tok}


def run(argv) -> int:
    return run_squad.main([str(a) for a in argv])


@pytest.mark.long(18)
def test_paper_steps_1_to_4_as_written(workspace):
    env = workspace
    out = env["OUTPUT_DIR"]
    step1 = command(STEP1, env, "--max_steps", "3").copy()
    step1[step1.index("bert-base-uncased")] = str(env["teacher"])  # the local stand-in folder
    assert run(step1) == 0
    best = out / "fintuned_bert" / "checkpoint-best"
    for name in ("config.json", "model.safetensors", "training_args.json", "tokenizer.json"):
        assert (best / name).is_file(), name
    results = json.loads((out / "fintuned_bert" / "eval_results.json").read_text())
    assert results["questions"] == 15 and 0 <= results["f1"] <= 100 and results["macs_ratio"] == 1.0
    # --do_eval after training reuses the final in-training evaluation: one entry, predictions written.
    assert [e["step"] for e in results["history"]] == [3]
    predictions = json.loads((out / "fintuned_bert" / "predictions.json").read_text())
    assert len(predictions) == 15

    assert run(command(STEP2, env, "--max_steps", "3")) == 0
    last = out / "intermediate" / "checkpoint-last"
    config = json.loads((last / "config.json").read_text())
    assert config["fit_size"] == 32  # the student learned a projection to the teacher's width
    assert (last / "training_state.pt").is_file()

    assert run(command(STEP3, env, "--max_steps", "3")) == 0
    assert (out / "dynamic_tinybert" / "checkpoint-best" / "model.safetensors").is_file()

    assert run(command(STEP4, env, "--max_steps", "3")) == 0
    ld = out / "dynamic_tinybert_ld_naive"
    assert (ld / "checkpoint-best" / "model.safetensors").is_file()
    assert (ld / "checkpoint-last" / "model.safetensors").is_file()
    assert any((ld / "runs").iterdir())  # TensorBoard events
    args = json.loads((ld / "checkpoint-last" / "training_args.json").read_text())
    assert args["length_adaptive"] and args["num_sandwich"] == 2


def tiny_args(env, out, *extra):
    return ["--data_dir", env["SQUAD_DIR"], "--model_name_or_path", env["teacher"], "--output_dir", out,
            "--max_seq_length", "128", "--doc_stride", "32", "--overwrite_output_dir", *extra]


@pytest.mark.long(30)
def test_training_learns_its_training_questions(workspace, tmp_path):
    """A tiny model fine-tuned on the shipped training questions answers them (F1 >= 90), far above
    the untrained model."""
    env = workspace
    learner = save_tiny_bert(tmp_path / "learner",
                             tiny_bert_config(len(env["tok"]), num_hidden_layers=2, hidden_size=64,
                                              intermediate_size=128, max_position_embeddings=512),
                             seed=0, tokenizer=env["tok"])
    common = ["--predict_file", "train-v1.1.json", "--per_gpu_eval_batch_size", "64"]
    args = tiny_args(env, tmp_path / "before", "--do_eval", *common)
    args[args.index("--model_name_or_path") + 1] = learner
    assert run(args) == 0
    before = json.loads((tmp_path / "before" / "eval_results.json").read_text())["f1"]
    args = tiny_args(env, tmp_path / "after", "--do_train", "--do_eval", *common, "--learning_rate", "2e-3",
                     "--num_train_epochs", "80", "--per_gpu_train_batch_size", "8", "--warmup_ratio", "0.05",
                     "--logging_steps", "0", "--save_steps", "0")
    args[args.index("--model_name_or_path") + 1] = learner
    assert run(args) == 0
    after = json.loads((tmp_path / "after" / "eval_results.json").read_text())["f1"]
    assert after >= 90.0, (before, after)
    assert before < 30.0


def test_resume_ends_with_the_same_weights(workspace, tmp_path):
    env = workspace
    common = ["--do_train", "--max_steps", "6", "--save_steps", "3", "--per_gpu_train_batch_size", "4",
              "--learning_rate", "1e-3", "--gradient_accumulation_steps", "2", "--layer_dropout_prob", "0.3",
              "--length_adaptive", "--num_sandwich", "1", "--logging_steps", "0"]
    assert run(tiny_args(env, tmp_path / "full", *common)) == 0
    assert run(tiny_args(env, tmp_path / "resumed", *common,
                         "--resume_from_checkpoint", tmp_path / "full" / "checkpoint-3")) == 0
    from safetensors.torch import load_file
    a = load_file(tmp_path / "full" / "checkpoint-6" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "checkpoint-last" / "model.safetensors")
    c = load_file(tmp_path / "full" / "checkpoint-3" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # training did move the weights


def test_sandwich_accumulates_each_sub_models_gradient(workspace):
    """train_step's accumulated gradient equals the sum of each sub-model's loss gradient,
    computed separately, each scaled by 1 / (num_sandwich + 2)."""
    from modeling_bert import BertForQuestionAnswering
    import length_drop

    args = run_squad.build_parser().parse_args(
        ["--model_name_or_path", "x", "--output_dir", "y", "--length_adaptive", "--num_sandwich", "2",
         "--max_seq_length", "16"])
    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_bert_config(50, num_hidden_layers=3))
    model.eval()  # no dropout: the two computations must see the same function
    batch = (torch.randint(5, 50, (2, 16)), torch.ones(2, 16, dtype=torch.long),
             torch.zeros(2, 16, dtype=torch.long), torch.tensor([3, 4]), torch.tensor([5, 6]))
    subs = [length_drop.SubModel("full", None, (0, 1, 2)),
            length_drop.SubModel("smallest", (13, 10, 8), (0, 2)),
            length_drop.SubModel("random", (15, 12, 12), (0, 1, 2)),
            length_drop.SubModel("random", (16, 9, 5), (0, 1, 2))]
    runtime = Runtime(torch.device("cpu"))
    sandwich = group_from(SandwichSettings, args, length_config=None)
    train_step("fp32", sandwich, model, Objective(group_from(ObjectiveSettings, args)), batch, subs, 0.5,
               runtime, None, True)
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    inputs = dict(zip(("input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"), batch))
    full = model(**inputs)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    losses = [full.loss]
    for sub in subs[1:]:
        out = model(**inputs, length_config=sub.length_config, layer_config=sub.layer_config)
        fs, fe = torch.log_softmax(full.start_logits.detach(), -1), torch.log_softmax(full.end_logits.detach(), -1)
        ss, se = torch.log_softmax(out.start_logits, -1), torch.log_softmax(out.end_logits, -1)
        kl = lambda a, b: (a.exp() * (a - b)).sum(-1).mean()  # noqa: E731  KL(a || b), batch mean
        losses.append((kl(ss, fs) + kl(se, fe)) / 2)  # the reference's KL(sub || full)
    for loss in losses:
        grads = torch.autograd.grad(loss * 0.5 / 4, list(model.parameters()), allow_unused=True, retain_graph=True)
        for (n, _), g in zip(model.named_parameters(), grads):
            if g is not None:
                expected[n] += g
    for n, g in got.items():
        torch.testing.assert_close(g, expected[n], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("case", [
    "no_model", "no_data", "teacher_without_flag", "flag_without_teacher", "length_config_and_adaptive",
    "non_empty_output", "different_vocab", "bad_length_config",
])
def test_errors_stop_before_training(workspace, tmp_path, case, capsys):
    env = workspace
    out = tmp_path / "out"
    argv = tiny_args(env, out, "--do_train")
    argv.remove("--overwrite_output_dir")
    expected = {
        "no_model": "no such model folder",
        "no_data": "does not exist",
        "teacher_without_flag": "no distillation flag",
        "flag_without_teacher": "needs --teacher_model_name_or_path",
        "length_config_and_adaptive": "one or the other",
        "non_empty_output": "--overwrite_output_dir",
        "different_vocab": "different vocabularies",
        "bad_length_config": "--length_config",
    }[case]
    if case == "no_model":
        argv[argv.index("--model_name_or_path") + 1] = tmp_path / "missing"
    elif case == "no_data":
        argv += ["--train_file", "nope.json"]
    elif case == "teacher_without_flag":
        argv += ["--teacher_model_name_or_path", env["teacher"]]
    elif case == "flag_without_teacher":
        argv += ["--pred_distill"]
    elif case == "length_config_and_adaptive":
        argv += ["--length_adaptive", "--length_config", "[128, 64]"]
    elif case == "non_empty_output":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "different_vocab":
        other_tok = make_tiny_tokenizer(tmp_path / "other_tok", ["completely different words here"])
        other = save_tiny_bert(tmp_path / "other_teacher", tiny_bert_config(len(other_tok)), tokenizer=other_tok)
        argv += ["--teacher_model_name_or_path", other, "--pred_distill"]
    elif case == "bad_length_config":
        argv += ["--length_config", "[128, 200]"]
    assert run(argv) == 2
    assert expected in capsys.readouterr().err
    if case == "non_empty_output":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not out.exists() or not any(Path(out).iterdir())


def test_overwrite_output_dir_keeps_other_files(workspace, tmp_path):
    env = workspace
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run(tiny_args(env, out, "--do_train", "--max_steps", "1", "--logging_steps", "0")) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "checkpoint-last" / "model.safetensors").is_file()


def test_eval_at_a_fixed_length_config_reports_fewer_macs(workspace, tmp_path):
    env = workspace
    assert run(tiny_args(env, tmp_path / "o", "--do_eval", "--length_config", "[100, 80, 60, 40]")) == 0
    results = json.loads((tmp_path / "o" / "eval_results.json").read_text())
    assert results["length_config"] == [100, 80, 60, 40]
    assert results["macs_ratio"] > 1.3
    assert (tmp_path / "o" / "predictions.json").is_file()


@pytest.mark.long(20)
def test_torchrun_two_processes_match_one_process(workspace, tmp_path):
    """DDP on 2 CPU processes (gloo) with 4 features each per step trains the same weights as one
    process with 8: the distributed sampler splits each batch of the single-process order."""
    import subprocess
    import sys

    env = workspace
    model = save_tiny_bert(tmp_path / "nodrop",
                           tiny_bert_config(len(env["tok"]), num_hidden_layers=2, hidden_dropout_prob=0.0,
                                            attention_probs_dropout_prob=0.0, max_position_embeddings=512),
                           seed=3, tokenizer=env["tok"])

    def argv(out, batch):
        a = tiny_args(env, out, "--do_train", "--max_steps", "3", "--per_gpu_train_batch_size", str(batch),
                      "--learning_rate", "1e-3", "--logging_steps", "0", "--save_steps", "0", "--no_cuda")
        a[a.index("--model_name_or_path") + 1] = model
        return [str(x) for x in a]

    assert run(argv(tmp_path / "one", 8)) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(run_squad.__file__)), *argv(tmp_path / "two", 4)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file
    a = load_file(tmp_path / "one" / "checkpoint-last" / "model.safetensors")
    b = load_file(tmp_path / "two" / "checkpoint-last" / "model.safetensors")
    init = load_file(model / "model.safetensors")
    last_bias = "bert.encoder.layer.1.output.LayerNorm.bias"
    assert max((a[k] - init[k]).abs().max().item() for k in init) > 1e-3  # training moved them
    for k in a:
        # Softmax is shift-invariant, so a bias added equally to every position has exactly zero
        # gradient (key biases, the QA head's bias, the last LayerNorm's bias, which reaches the
        # logits only through the QA head): Adam turns their rounding noise into lr-sized steps.
        if k.endswith("attention.self.key.bias") or k in ("qa_outputs.bias", last_bias):
            continue
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-4)


def test_search_through_run_squad_measures_what_eval_measures(workspace, tmp_path):
    """--do_search evaluates configurations with the same evaluation as --do_eval: the CSV's F1
    and MACs for a configuration equal a separate --do_eval run at that --length_config."""
    import csv

    env = workspace
    assert run(tiny_args(env, tmp_path / "search", "--do_search", "--search_backend", "evolution",
                         "--search_budget", "3", "--search_min_length", "40", "--evo_iter", "1",
                         "--population_size", "2", "--mutation_size", "1", "--crossover_size", "1",
                         "--search_rates", "1.0,0.8")) == 0
    rows = list(csv.DictReader((tmp_path / "search" / "search_results.csv").open()))
    assert {r["backend"] for r in rows} >= {"full", "constant", "evolution"}
    assert all(int(r["questions"]) == 15 for r in rows)
    reduced = next(r for r in rows if r["backend"] == "constant")
    assert run(tiny_args(env, tmp_path / "eval", "--do_eval", "--length_config", reduced["length_config"])) == 0
    results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert float(reduced["f1"]) == pytest.approx(results["f1"])
    assert int(reduced["macs"]) == results["macs"]
    assert (tmp_path / "search" / "pareto.png").stat().st_size > 1000


def start_quickstart(tmp_path, output_dir):
    """The README's "run it" command, with small random models and a few steps, started in the
    background (``.communicate()`` waits for it)."""
    import os
    import subprocess
    import sys

    # The scripts call `python`: make it the interpreter running the tests (a `python` elsewhere on
    # PATH may be another environment, with other package versions, or be missing altogether).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "OUTPUT_DIR": str(output_dir), "TINY": "1", "STEPS": "2", "BUDGET": "3",
           "MAX_SEQ_LENGTH": "128", "OMP_NUM_THREADS": "1", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("SIGOPT_API_TOKEN", None)
    return subprocess.Popen(["bash", str(Path(run_squad.__file__).parent / "quickstart.sh")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_quickstart(tmp_path, output_dir):
    import subprocess

    process = start_quickstart(tmp_path, output_dir)
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def quickstart_results(out: Path) -> dict:
    """What a quickstart run measured: every step's dev scores, the search's rows (without their
    timings), the length menu's choices, and the trained weights."""
    from safetensors.torch import load_file

    steps = ("fintuned_bert", "intermediate", "dynamic_tinybert", "dynamic_tinybert_ld_naive")
    rows = [{k: v for k, v in row.items() if k not in ("eval_seconds", "timestamp")}
            for row in csv.DictReader((out / "search" / "search_results.csv").open())]
    menu = json.loads((out / steps[-1] / "checkpoint-best" / "length_configs.json").read_text())
    return {"history": {s: [{k: e.get(k) for k in ("step", "exact_match", "f1")} for e in
                            json.loads((out / s / "eval_results.json").read_text())["history"]] for s in steps},
            "rows": rows, "menu": [(c["length_config"], c["f1"]) for c in menu["configurations"]],
            "weights": {s: load_file(out / s / "checkpoint-best" / "model.safetensors") for s in steps}}


@pytest.mark.long(100)
def test_quickstart_twice_gives_the_same_results(tmp_path):
    """quickstart.sh runs the five steps, says where everything is and keeps no optimizer state;
    the same command run again, into the folder an earlier quickstart left, replaces that run and
    measures the same numbers. The two runs go side by side (two processes, one core each): one
    into a new folder, one into a folder holding an earlier run's marker and files."""
    import subprocess

    out, again = tmp_path / "qs", tmp_path / "qs-again"
    (again / "fintuned_bert").mkdir(parents=True)
    (again / ".quickstart").touch()  # what an earlier quickstart run leaves
    (again / "fintuned_bert" / "stale.txt").write_text("from the earlier run")
    processes = [start_quickstart(tmp_path, folder) for folder in (out, again)]
    outputs = [p.communicate(timeout=600) for p in processes]  # sets each returncode
    first, second = (subprocess.CompletedProcess(p.args, p.returncode, *streams) for p, streams in zip(processes, outputs))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "SIGOPT_API_TOKEN is not set" in first.stdout
    search_dir = out / "search"
    for name in ("search_results.csv", "pareto_front.csv", "pareto.png"):
        assert (search_dir / name).is_file(), name
        assert str(search_dir / name) in first.stdout
    menu = out / "dynamic_tinybert_ld_naive" / "checkpoint-best" / "length_configs.json"
    assert menu.is_file() and str(menu) in first.stdout
    assert "--max_f1_drop 1: length configuration" in first.stderr and '"answer"' in first.stdout
    assert "What the numbers mean" in first.stdout and f"{out}/fintuned_bert" in first.stdout  # the sizes
    assert not list(out.rglob("training_state.pt"))
    expected = quickstart_results(out)

    assert second.returncode == 0, second.stderr[-3000:]
    assert "removing the earlier quickstart run" in second.stdout
    assert not (again / "fintuned_bert" / "stale.txt").exists()
    got = quickstart_results(again)
    assert got["history"] == expected["history"] and got["rows"] == expected["rows"]
    assert got["menu"] == expected["menu"] and len(got["rows"]) >= 3
    for step, weights in expected["weights"].items():
        assert all(torch.equal(weights[k], got["weights"][step][k]) for k in weights), step
    answer = [line for line in first.stdout.splitlines() if line.startswith('{"answer"')]
    assert answer and answer == [line for line in second.stdout.splitlines() if line.startswith('{"answer"')]


def test_quickstart_refuses_a_folder_it_did_not_write(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    proc = run_quickstart(tmp_path, out)
    assert proc.returncode == 2 and "was not written by quickstart.sh" in proc.stderr
    assert (out / "notes.txt").read_text() == "keep me"


def test_sandwich_from_default_flags_without_layer_dropout():
    """--length_adaptive alone (LAT's default --layer_dropout_bound 0, an integer count): every
    sub-model runs all layers; the smallest drops 20% of the tokens at every layer."""
    import random

    args = run_squad.build_parser().parse_args(
        ["--model_name_or_path", "x", "--output_dir", "y", "--length_adaptive", "--max_seq_length", "100"])
    subs = sub_models_for_step(group_from(SandwichSettings, args, length_config=None), 3, random.Random(0))
    assert [s.kind for s in subs] == ["full", "smallest", "random", "random"]
    assert all(s.layer_config == (0, 1, 2) for s in subs)
    assert subs[0].length_config is None
    assert subs[1].length_config == (80, 64, 52)  # ceil(100 * 0.8), ceil(80 * 0.8), ceil(64 * 0.8)
    for s in subs[2:]:
        lengths = s.length_config
        assert all(a >= b for a, b in zip(lengths, lengths[1:])) and lengths[0] <= 100 and lengths[-1] >= 52


def test_feature_cache_never_lands_in_a_read_only_data_folder(workspace, tmp_path):
    """Root ignores permission bits, so a read-only (r-x) data folder must be detected by its mode:
    the cache then goes to <output_dir>/cached_features and the data folder stays as it was."""
    import os
    import stat

    env = workspace
    data = tmp_path / "ro_squad"
    shutil.copytree(env["SQUAD_DIR"], data, ignore=shutil.ignore_patterns("cached_*"))
    before = sorted(p.name for p in data.iterdir())
    os.chmod(data, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        args = tiny_args(env, tmp_path / "out", "--do_eval")
        args[args.index("--data_dir") + 1] = data
        assert run(args) == 0
        assert sorted(p.name for p in data.iterdir()) == before
        assert any((tmp_path / "out" / "cached_features").glob("cached_squad_eval_*"))
    finally:
        os.chmod(data, 0o755)


def test_half_precision_checkpoint_loads_as_float32(workspace, tmp_path):
    """A checkpoint stored in bf16 (as the GPU runs bring them back) loads with float32 weights
    for training; transformers 5 would otherwise keep the storage dtype."""
    from transformers import BertForQuestionAnswering as HFBert

    src = HFBert.from_pretrained(str(workspace["teacher"]), dtype=torch.float32)
    src.to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
    model = load_model(str(tmp_path / "bf16"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    want = src.state_dict()["qa_outputs.weight"].float()
    torch.testing.assert_close(model.qa_outputs.weight.detach(), want, atol=0, rtol=0)


@pytest.mark.parametrize("full_weight, expected", [(None, [0.25] * 4), (0.5, [0.5, 1 / 6, 1 / 6, 1 / 6]),
                                                   (1.0, [1.0, 0.0, 0.0, 0.0])])
def test_sandwich_weights(full_weight, expected):
    argv = ["--model_name_or_path", "x", "--output_dir", "y", "--length_adaptive", "--num_sandwich", "2"]
    if full_weight is not None:
        argv += ["--sandwich_full_weight", str(full_weight)]
    args = run_squad.build_parser().parse_args(argv)
    sandwich = group_from(SandwichSettings, args, length_config=None)
    got = [sandwich_weight(sandwich, i, 4) for i in range(4)]
    assert got == pytest.approx(expected)
    assert sum(got) == pytest.approx(1.0)


@pytest.mark.parametrize("extra, message", [
    (["--length_adaptive", "--length_space", "relative", "--smallest_length_config", "[1.0, 0.5]"],
     "--smallest_length_config: length config: expected a JSON list of 4"),
    (["--length_adaptive", "--length_space", "relative", "--smallest_length_config", "[64, 32, 16, 8]"],
     "--length_space relative draws sub-models as keep fractions"),
    (["--length_adaptive", "--smallest_length_config", "[1.0, 0.5, 0.3, 0.2]"],
     "--length_space absolute draws sub-models as token counts"),
    (["--smallest_length_config", "[1.0, 0.5, 0.3, 0.2]"], "it needs --do_train --length_adaptive"),
    (["--length_adaptive", "--length_space", "relative", "--layer_dropout_bound", "1",
      "--smallest_length_config", "[1.0, 0.5, 0.3, 0.2]"], "leave out --layer_dropout_prob / --layer_dropout_bound"),
])
def test_smallest_length_config_is_checked_before_training(workspace, tmp_path, extra, message, capsys):
    out = tmp_path / "o"
    assert run(tiny_args(workspace, out, "--do_train", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_smallest_length_config_reaches_the_sandwich(workspace, tmp_path):
    """The parsed flag becomes the sandwich's smallest sub-model; the random ones lie above it."""
    import random

    args = run_squad.build_parser().parse_args([str(a) for a in tiny_args(
        workspace, tmp_path / "o", "--do_train", "--length_adaptive", "--length_space", "relative",
        "--smallest_length_config", "[1.0, 0.5, 0.25, 0.25]")])
    settings = build_settings(args)
    assert settings.sandwich.smallest_length_config == (1.0, 0.5, 0.25, 0.25)
    subs = sub_models_for_step(settings.sandwich, 4, random.Random(0))
    assert subs[1].kind == "smallest" and subs[1].length_config == (1.0, 0.5, 0.25, 0.25)
    assert all(1.0 >= s.length_config[1] >= 0.5 and s.length_config[3] >= 0.25 for s in subs[2:])


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_sandwich_full_weight_out_of_range_is_an_error(workspace, tmp_path, value, capsys):
    argv = tiny_args(workspace, tmp_path / "o", "--do_train", "--length_adaptive", "--sandwich_full_weight", value)
    assert run(argv) == 2
    assert "--sandwich_full_weight" in capsys.readouterr().err


def test_attention_loss_on_probabilities_compares_softmax_outputs(workspace):
    """--attention_loss_input probabilities (Intel's distill()) feeds the attention loss the
    post-softmax probabilities: the loss equals a hand computation on softmax(scores)."""
    from modeling_bert import BertForQuestionAnswering

    argv = ["--model_name_or_path", "x", "--output_dir", "y", "--att_loss_ratio", "1", "--att_mse",
            "--attention_loss_input", "probabilities", "--teacher_model_name_or_path", "t"]
    args = run_squad.build_parser().parse_args(argv)
    torch.manual_seed(0)
    student = BertForQuestionAnswering(tiny_bert_config(50, num_hidden_layers=2)).eval()
    teacher = BertForQuestionAnswering(tiny_bert_config(50, num_hidden_layers=4)).eval()
    objective = Objective(group_from(ObjectiveSettings, args), teacher)
    assert objective.needs_attention_probs and not objective.needs_attention_scores
    inputs = dict(input_ids=torch.randint(5, 50, (2, 12)), attention_mask=torch.ones(2, 12, dtype=torch.long))
    t_out = objective.teacher_outputs(inputs)
    s_out = student(**inputs, output_attentions=True)
    loss, terms = objective.full_model_loss(student, s_out, t_out)
    s_ref = student(**inputs, output_attention_scores=True).attention_scores
    t_ref = teacher(**inputs, output_attention_scores=True).attention_scores
    want = sum(torch.mean((torch.softmax(s_ref[j], -1) - torch.softmax(t_ref[2 * j + 1], -1)) ** 2) for j in range(2))
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert terms["att_loss"] == pytest.approx(want.item(), rel=1e-5)


def test_help_loads_no_torch_and_every_flag_has_a_help_line():
    """--help answers without importing torch or transformers (seconds each), and every flag says
    what it is; flags with a default show it."""
    import subprocess
    import sys

    code = ("import sys, run_squad; text = run_squad.build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(run_squad.__file__).parent)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]
    parser = run_squad.build_parser()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 80
    assert [a.dest for a in flags if not a.help] == []
    help_text = " ".join(parser.format_help().split())
    assert "--learning_rate LEARNING_RATE AdamW's peak learning rate (default: 5e-05)" in help_text
    assert "--save_training_state {resume,all,none}" in help_text and "(default: resume)" in help_text
    assert "{None,bert}" not in help_text
