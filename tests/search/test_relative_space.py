"""Relative length configurations (keep fractions) through evaluation, the search, the menu and
inference: evaluated on the batching inference runs, stored as fractions, never mixed with the
absolute space's rows."""
import csv
import json
import shutil

import numpy as np
import pytest

from training import evaluation
import inference
from serving import menu as length_menu
import run_squad
import search
import utils_squad
from evaluate_squad import evaluate_answers
from fake_sigopt_server import FakeSigOpt
from helpers import TINY_SQUAD_DIR, make_tiny_tokenizer, save_tiny_bert, tiny_bert_config, tiny_squad_texts
from core.models import load_tokenizer
from training.runtime import setup_runtime
from training.settings import build_settings
from search_helpers import SyntheticTask, make_args, read_csv

LENGTHS = ["--max_seq_length", "128", "--doc_stride", "32"]
RELATIVE = "[1.0, 0.6, 0.35]"
BATCH = 3


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("relative")
    squad = root / "squad"
    shutil.copytree(TINY_SQUAD_DIR, squad, ignore=shutil.ignore_patterns("cached_*"))
    tok = make_tiny_tokenizer(root / "tok", tiny_squad_texts())
    config = tiny_bert_config(len(tok), num_hidden_layers=3, max_position_embeddings=512)
    return {"squad": squad, "model": save_tiny_bert(root / "model", config, seed=3, tokenizer=tok)}


def argv(ws, out, *extra, batch=BATCH):
    return [str(a) for a in ["--model_name_or_path", ws["model"], "--data_dir", ws["squad"], "--output_dir", out,
                             *LENGTHS, "--do_lower_case", "--per_gpu_eval_batch_size", batch, "--threads", "1",
                             *extra]]


def eval_results(ws, out, config, batch=BATCH) -> dict:
    assert run_squad.main(argv(ws, out, "--do_eval", "--length_config", config, batch=batch)) == 0
    return json.loads((out / "eval_results.json").read_text())


def test_relative_eval_gives_question_answerers_predictions(ws, tmp_path):
    """--do_eval at a relative configuration runs inference.py's batching: the same logits and
    answers as QuestionAnswerer at that configuration and batch size."""
    results = eval_results(ws, tmp_path / "eval", RELATIVE)
    assert results["batching"] == "sorted" and results["eval_batch_size"] == BATCH
    assert "real lengths" in results["macs_basis"] and results["macs_ratio"] > 1.2
    expected = json.loads((tmp_path / "eval" / "predictions.json").read_text())

    qa = inference.QuestionAnswerer.from_pretrained(ws["model"], json.loads(RELATIVE), max_seq_length=128,
                                                    doc_stride=32, batch_size=BATCH)
    examples = utils_squad.read_squad_examples(ws["squad"] / "dev-v1.1.json", False)
    predictions, _ = qa.predict(examples)
    assert predictions == expected and len(predictions) == 15

    # Logits too, bit for bit, including the -inf past each batch's width.
    settings = build_settings(run_squad.build_parser().parse_args(
        argv(ws, tmp_path / "x", "--do_eval", "--length_config", RELATIVE)))
    runtime = setup_runtime(settings.runtime)
    evaluator = evaluation.DevEvaluator(settings.eval, settings.data, load_tokenizer(settings.model.tokenizer_path, settings.model.do_lower_case), runtime)
    starts, ends, _, batching = evaluator.logits(qa.model, qa.length_config)
    qa_starts, qa_ends = qa.logits(qa.features(examples))
    assert batching == "sorted" and np.isneginf(starts).any()
    np.testing.assert_array_equal(starts, qa_starts)
    np.testing.assert_array_equal(ends, qa_ends)
    # Each question's F1 (for paired comparisons) is the official metric on that question alone.
    scored = evaluator(qa.model, qa.length_config, write_predictions=False, per_question=True)
    gold = {e.qas_id: [a["text"] for a in e.answers] for e in examples}
    assert scored["f1_per_question"] == pytest.approx(
        [evaluate_answers({q: answers}, {q: expected[q]})["f1"] for q, answers in gold.items()])
    assert np.mean(scored["f1_per_question"]) == pytest.approx(scored["f1"])
    # The absolute evaluation keeps the paper's batching: every feature padded, no -inf.
    absolute_starts, _, _, batching = evaluator.logits(qa.model, (60, 40, 30))
    assert batching == "padded" and not np.isneginf(absolute_starts).any()


def test_relative_search_stores_fractions_and_its_front_re_evaluates(ws, tmp_path):
    out, menu_path = tmp_path / "search", tmp_path / "menu" / "length_configs.json"
    assert run_squad.main(argv(ws, out, "--do_search", "--search_length_space", "relative",
                               "--search_backend", "optuna", "--search_budget", "4", "--search_min_fraction", "0.3",
                               "--search_fraction_step", "0.05", "--search_rates", "1.0,0.8",
                               "--search_menu", menu_path)) == 0
    rows = read_csv(out / "search_results.csv")
    configs = [json.loads(r["length_config"]) for r in rows]
    assert all(isinstance(x, float) and 0 < x <= 1 for c in configs for x in c)
    assert configs[0] == [1.0, 1.0, 1.0] and configs[1] == [0.8, 0.64, 0.512]  # full, then the sweep
    for row, config in zip(rows, configs):
        if row["backend"] == "optuna":
            assert all(x >= 0.3 and round(x / 0.05, 6).is_integer() for x in config), config
            assert config == sorted(config, reverse=True)
    meta = json.loads((out / search.META_JSON).read_text())
    assert meta["length_space"] == "relative" and meta["batching"] == "sorted" and meta["eval_batch_size"] == BATCH

    front = [r for r in rows if r["pareto"] == "1"]
    assert front
    for row in front:
        results = eval_results(ws, tmp_path / f"eval{row['trial']}", row["length_config"])
        assert results["f1"] == pytest.approx(float(row["f1"]), abs=1e-9)
        assert results["macs"] == int(row["macs"])

    menu = length_menu.load_menu(menu_path, 3)
    assert menu.length_space == "relative" and menu.speedup_basis == "measured" and menu.batch_size == BATCH
    assert not (ws["model"] / "length_configs.json").exists()  # --search_menu put it elsewhere
    # The menu was measured on these weights: inference accepts it and runs what it chose.
    qa = inference.QuestionAnswerer.from_pretrained(ws["model"], max_seq_length=128, doc_stride=32,
                                                    batch_size=BATCH, max_f1_drop=100, menu=menu_path)
    assert qa.length_config == qa.menu_choice.entry.length_config
    assert qa.menu_choice.entry.speedup == max(e.speedup for e in menu.candidates)


def test_a_search_of_one_space_never_reuses_the_others_rows(ws, tmp_path, capsys):
    out = tmp_path / "search"
    common = ["--do_search", "--search_backend", "constant", "--search_rates", "1.0,0.8", "--overwrite_output_dir",
              "--search_menu", tmp_path / "menu.json"]
    assert run_squad.main(argv(ws, out, *common)) == 0
    before = (out / "search_results.csv").read_bytes()
    capsys.readouterr()
    assert run_squad.main(argv(ws, out, *common, "--search_length_space", "relative")) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("run_squad.py: error:")]
    assert "length_space" in line and "--search_restart" in line and "Traceback" not in err
    assert (out / "search_results.csv").read_bytes() == before
    # The absolute space on sorted batches is another measurement too.
    assert run_squad.main(argv(ws, out, *common, "--search_batching", "sorted")) == 2
    assert "batching" in capsys.readouterr().err


# --- the search package in the relative space (synthetic evaluation) ---------------------------

class RelativeTask:
    """F1 grows with every keep fraction; MACs and seconds with their sum."""

    def __init__(self, num_layers):
        self.num_layers = num_layers
        self.calls = []

    def __call__(self, config):
        assert all(isinstance(x, float) for x in config), config
        self.calls.append(tuple(config))
        f1 = 90.0 - 4.0 * sum((i + 1) * (1 - f) ** 2 for i, f in enumerate(config))
        return {"f1": f1, "exact_match": f1 - 8, "macs": int(1e6 * sum(config)), "eval_seconds": sum(config),
                "questions": 20}

    @property
    def full_macs(self):
        return int(1e6 * self.num_layers)


def assert_relative_rows(path, num_layers, min_fraction, step, backend):
    rows = read_csv(path)
    searched = [json.loads(r["length_config"]) for r in rows if r["backend"] == backend]
    assert searched
    for config in searched:
        assert len(config) == num_layers and config == sorted(config, reverse=True)
        assert all(min_fraction - 1e-9 <= x <= 1.0 and round(x / step, 6).is_integer() for x in config), config
    return rows


@pytest.mark.parametrize("backend", ["optuna", "evolution"])
def test_relative_space_backends_search_the_fraction_grid(tmp_path, backend):
    task = RelativeTask(4)
    args = make_args("--search_backend", backend, "--search_length_space", "relative", "--search_budget", "8",
                     "--search_min_fraction", "0.2", "--search_fraction_step", "0.05", "--population_size", "3",
                     "--mutation_size", "2", "--crossover_size", "2", "--evo_iter", "5", "--search_objective", "time")
    path = search.run_search_from_args(args, task, 4, 384, task.full_macs, tmp_path)
    rows = assert_relative_rows(path, 4, 0.2, 0.05, backend)
    assert sum(r["backend"] == backend for r in rows) == 8
    summary = json.loads((tmp_path / search.SUMMARY_JSON).read_text())
    assert summary["length_space"] == "relative" and summary["min_fraction"] == 0.2
    task.calls.clear()  # resumed: every configuration comes from the CSV, fractions read back equal
    search.run_search_from_args(args, task, 4, 384, task.full_macs, tmp_path)
    assert task.calls == []


def test_relative_space_with_sigopt(tmp_path, monkeypatch):
    task = RelativeTask(3)
    with FakeSigOpt(token="t", seed=4) as server:
        monkeypatch.setenv("SIGOPT_API_TOKEN", "t")
        monkeypatch.setenv("SIGOPT_API_URL", server.url)
        common = ["--search_backend", "sigopt", "--search_length_space", "relative", "--search_min_fraction", "0.3",
                  "--search_fraction_step", "0.1", "--search_rates", "1.0"]
        search.run_search_from_args(make_args(*common, "--search_budget", "4"), task, 3, 128, task.full_macs,
                                    tmp_path / "rel")
        assert_relative_rows(tmp_path / "rel" / search.RESULTS_CSV, 3, 0.3, 0.1, "sigopt")
        (experiment,) = server.experiments.values()
        assert {p["bounds"]["max"] for p in experiment["parameters"]} == {10}
        # An absolute search cannot join the relative experiment.
        (experiment_id,) = server.experiments
        absolute = SyntheticTask(3, 128)
        with pytest.raises(ValueError, match="relative|absolute"):
            search.run_search_from_args(
                make_args("--search_backend", "sigopt", "--search_min_length", "40", "--search_rates", "1.0",
                          "--sigopt_experiment_id", experiment_id), absolute, 3, 128, absolute.full_macs,
                tmp_path / "abs")
    assert server.errors == []


def test_relative_store_refuses_token_counts(tmp_path):
    task = RelativeTask(3)
    args = make_args("--search_backend", "constant", "--search_length_space", "relative", "--search_rates", "1.0,0.9")
    path = search.run_search_from_args(args, task, 3, 128, task.full_macs, tmp_path)
    text = path.read_text()
    path.write_text(text + '9,optuna,"[100, 90, 80]",1,1.0,50.0,40.0,0.1,20,\n')
    with pytest.raises(ValueError, match="line 4.*token counts.*relative space"):
        search.run_search_from_args(args, task, 3, 128, task.full_macs, tmp_path)


@pytest.mark.parametrize("flags, words", [
    (["--search_length_space", "relative", "--search_batching", "padded"], "--search_batching padded"),
    (["--search_length_space", "relative", "--search_fraction_step", "0.03"], "--search_fraction_step"),
    (["--search_length_space", "relative", "--search_min_fraction", "1.5"], "--search_min_fraction"),
    (["--search_length_space", "relative", "--search_min_fraction", "0.001"], "--search_min_fraction"),
])
def test_bad_relative_flags_name_the_flag(tmp_path, flags, words):
    task = RelativeTask(3)
    with pytest.raises(ValueError, match=words):
        search.run_search_from_args(make_args("--search_backend", "constant", *flags), task, 3, 128, 3, tmp_path)
    assert task.calls == []


def test_sweep_in_fraction_space():
    space = search.SearchSpace.relative(6, 0.25, 0.01)
    assert search.sweep_config(space, 0.8) == (0.8, 0.64, 0.512, 0.4096, 0.3277, 0.2621)
    assert search.sweep_config(space, 1.0) == space.full_config == (1.0,) * 6
    assert space.config((37, 30, 25)) == (0.37, 0.3, 0.25) and space.units((0.37, 0.3, 0.25)) == (37, 30, 25)


# --- the comparison script ------------------------------------------------------------------------

def test_bench_spaces_runs_on_the_tiny_model(ws, tmp_path):
    out = tmp_path / "bench"
    from bench import bench_spaces  # in this process: a new interpreter costs seconds of imports

    argv = ["--model", ws["model"], "--dev_file", ws["squad"] / "dev-v1.1.json", "--max_questions", "6",
            "--budget", "2", "--threads", "1", "--batch_size", "4", "--max_seq_length", "128", "--doc_stride", "32",
            "--min_length", "40", "--rates", "1.0,0.7", "--repeats", "1", "--output_dir", out]
    assert bench_spaces.main([str(a) for a in argv]) == 0
    result = json.loads((out / "bench_spaces.json").read_text())
    spaces = {r["space"] for r in result["rows"]}
    assert spaces <= {"absolute", "relative"} and result["rows"][0]["relative_time"] == 1.0
    with open(out / "bench_spaces.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(result["rows"])
    assert (out / "bench_spaces.png").stat().st_size > 1000
    for space in ("absolute", "relative"):
        meta = json.loads((out / space / search.META_JSON).read_text())
        assert meta["batching"] == "sorted" and meta.get("length_space", "absolute") == space
    assert not (ws["model"] / "length_configs.json").exists()  # the bench keeps its menus to itself
