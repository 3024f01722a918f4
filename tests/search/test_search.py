"""Tests of search.py on a synthetic evaluation function (no model needed).

The synthetic F1 grows smoothly with every layer's length, MACs are an analytic sum over layers,
and a counter records every configuration actually evaluated. SigOpt is exercised with the real
``sigopt`` client against tests/fake_sigopt_server.py.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import search
from fake_sigopt_server import FakeSigOpt

from helpers import REPO_ROOT
from search_helpers import (SyntheticTask, assert_in_space, brute_force_pareto, config_of,  # noqa: F401
                            constant_rate_config, make_args, read_csv)


@pytest.fixture
def sigopt_env(monkeypatch):
    """Clean SigOpt environment; tests set token/URL themselves."""
    monkeypatch.delenv("SIGOPT_API_TOKEN", raising=False)
    monkeypatch.delenv("SIGOPT_API_URL", raising=False)
    return monkeypatch


# ----------------------------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------------------------

def test_constant_rate_config_matches_hand_computed_lat_lengths():
    # LAT: each layer keeps ceil(0.8 * previous): 384*.8=307.2 -> 308, 246.4 -> 247, ...
    assert constant_rate_config(384, 6, 0.8) == (308, 247, 198, 159, 128, 103)
    assert constant_rate_config(384, 3, 1.0) == (384, 384, 384)
    # Floor of 2 tokens, as LAT's sample_length_configuration(min_length=2), below the min length.
    assert constant_rate_config(10, 4, 0.1) == (2, 2, 2, 2)


def test_pareto_flags_agree_with_brute_force_including_ties():
    import random

    rng = random.Random(3)
    points = [(float(rng.randint(0, 6)), float(rng.randint(0, 6))) for _ in range(60)]
    points += [points[0], points[5]]  # exact duplicates
    assert search.pareto_flags(points) == brute_force_pareto(points)


def test_repair_clips_and_makes_non_increasing():
    space = search.SearchSpace(4, 10, 50)
    assert space.repair([60.4, 20.6, 30, 3]) == (50, 21, 21, 10)


def test_default_backend_follows_sigopt_token(sigopt_env):
    args = make_args()
    assert search.resolve_backend(args) == "optuna"
    sigopt_env.setenv("SIGOPT_API_TOKEN", "x")
    assert search.resolve_backend(args) == "sigopt"
    assert search.resolve_backend(make_args("--search_backend", "evolution")) == "evolution"


def test_lat_flag_names_and_defaults():
    args = make_args()
    assert (args.evo_iter, args.population_size, args.mutation_size, args.mutation_prob,
            args.crossover_size) == (100, 20, 30, 0.5, 30)
    assert args.search_min_length == 91 and args.search_objective == "macs"


# ----------------------------------------------------------------------------------------------
# Constant sweep, CSV, Pareto, resume
# ----------------------------------------------------------------------------------------------

def test_constant_backend_writes_rows_front_plot_summary(tmp_path):
    task = SyntheticTask(num_layers=5, max_length=40)
    args = make_args("--search_backend", "constant", "--search_min_length", "4",
                     "--search_rates", "1.0,0.9,0.8,0.7,0.6")
    path = search.run_search_from_args(args, task, 5, 40, task.full_macs, tmp_path)
    rows = read_csv(path)
    assert tuple(rows[0].keys()) == search.CSV_COLUMNS
    # rate 1.0 is the full-length configuration: measured once, as the "full" row.
    assert [r["backend"] for r in rows] == ["full"] + ["constant"] * 4
    expected = [(40,) * 5] + [constant_rate_config(40, 5, r) for r in (0.9, 0.8, 0.7, 0.6)]
    assert [config_of(r) for r in rows] == expected
    assert len(task.calls) == 5
    for row in rows:
        config = config_of(row)
        assert int(row["macs"]) == task.macs(config)
        assert float(row["f1"]) == pytest.approx(task.f1(config))
        assert float(row["macs_ratio"]) == pytest.approx(task.full_macs / task.macs(config))
    front = read_csv(tmp_path / "pareto_front.csv")
    assert [config_of(r) for r in front] == sorted((config_of(r) for r in rows if r["pareto"] == "1"),
                                                   key=task.macs)
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "search_summary.json").read_text())
    assert summary["backend"] == "constant" and summary["rows"] == 5 and summary["completed"]


def test_pareto_column_matches_brute_force_for_both_objectives(tmp_path):
    task = SyntheticTask(num_layers=3, max_length=30)
    for objective in ("macs", "time"):
        out = tmp_path / objective
        args = make_args("--search_backend", "optuna", "--search_budget", "25", "--search_min_length", "5",
                         "--search_objective", objective, "--search_seed", "1")
        rows = read_csv(search.run_search_from_args(args, task, 3, 30, task.full_macs, out))
        key = "macs" if objective == "macs" else "eval_seconds"
        points = [(float(r["f1"]), float(r[key])) for r in rows]
        assert [r["pareto"] == "1" for r in rows] == brute_force_pareto(points)
        front = read_csv(out / "pareto_front.csv")
        assert len(front) == sum(brute_force_pareto(points))
        assert [int(r["macs"]) for r in front] == sorted(int(r["macs"]) for r in front)


def test_resume_skips_measured_configurations_and_drops_a_torn_row(tmp_path):
    task = SyntheticTask(num_layers=4, max_length=32)
    args = make_args("--search_backend", "evolution", "--search_budget", "12", "--search_min_length", "6",
                     "--population_size", "4", "--mutation_size", "3", "--crossover_size", "3",
                     "--evo_iter", "50")
    path = search.run_search_from_args(args, task, 4, 32, task.full_macs, tmp_path)
    first_rows = read_csv(path)
    assert len(task.calls) == len(first_rows) == len(set(task.calls))

    # Same run again: everything is served from the CSV, nothing is evaluated.
    task.calls.clear()
    search.run_search_from_args(args, task, 4, 32, task.full_macs, tmp_path)
    assert task.calls == []
    assert [config_of(r) for r in read_csv(path)] == [config_of(r) for r in first_rows]

    # A crash in the middle of writing a row: the partial row is dropped, the rest kept, and
    # the configuration is measured again.
    text = path.read_text()
    path.write_text(text + '99,evolution,"[30, 2')
    task.calls.clear()
    search.run_search_from_args(args, task, 4, 32, task.full_macs, tmp_path)
    assert task.calls == []
    assert len(read_csv(path)) == len(first_rows)

    # A larger budget: only the new configurations are evaluated; the budget counts old rows.
    task.calls.clear()
    bigger = make_args("--search_backend", "evolution", "--search_budget", "20", "--search_min_length", "6",
                       "--population_size", "4", "--mutation_size", "3", "--crossover_size", "3",
                       "--evo_iter", "50")
    search.run_search_from_args(bigger, task, 4, 32, task.full_macs, tmp_path)
    rows = read_csv(path)
    assert sum(r["backend"] == "evolution" for r in rows) == 20
    assert len(task.calls) == 8
    assert not set(task.calls) & {config_of(r) for r in first_rows}


@pytest.mark.parametrize("flags, flag_name", [
    (["--search_min_length", "200"], "--search_min_length"),
    (["--search_budget", "0"], "--search_budget"),
    (["--search_rates", "1.0,abc"], "--search_rates"),
    (["--search_rates", "1.5"], "--search_rates"),
    (["--mutation_prob", "1.5"], "--mutation_prob"),
])
def test_bad_flags_raise_naming_the_flag_and_keep_the_csv(tmp_path, flags, flag_name):
    task = SyntheticTask(num_layers=3, max_length=64)
    search.run_search_from_args(make_args("--search_backend", "constant", "--search_min_length", "8"),
                                task, 3, 64, task.full_macs, tmp_path)
    before = (tmp_path / "search_results.csv").read_bytes()
    task.calls.clear()
    with pytest.raises(ValueError, match=flag_name):
        search.run_search_from_args(make_args("--search_backend", "constant", "--search_min_length", "8", *flags),
                                    task, 3, 64,
                                    task.full_macs, tmp_path)
    assert task.calls == []
    assert (tmp_path / "search_results.csv").read_bytes() == before


def test_unknown_backend_is_refused(tmp_path):
    task = SyntheticTask(num_layers=3, max_length=64)
    args = make_args()
    args.search_backend = "hyperopt"  # as if set programmatically, bypassing argparse choices
    with pytest.raises(ValueError, match="--search_backend"):
        search.run_search_from_args(args, task, 3, 64, task.full_macs, tmp_path)
    with pytest.raises(SystemExit):
        make_args("--search_backend", "hyperopt")


# ----------------------------------------------------------------------------------------------
# Optuna
# ----------------------------------------------------------------------------------------------

def test_optuna_respects_space_and_budget_and_shares_the_study(tmp_path):
    num_layers, max_length, min_length, budget = 5, 48, 12, 14
    task = SyntheticTask(num_layers, max_length)
    args = make_args("--search_backend", "optuna", "--search_budget", str(budget),
                     "--search_min_length", str(min_length), "--search_rates", "0.9")
    path = search.run_search_from_args(args, task, num_layers, max_length, task.full_macs, tmp_path)
    rows = [r for r in read_csv(path) if r["backend"] == "optuna"]
    assert 1 <= len(rows) <= budget
    for row in rows:
        assert_in_space(config_of(row), num_layers, min_length, max_length)
    with sqlite3.connect(tmp_path / "search.db") as db:
        states = [s for (s,) in db.execute("select state from trials")]
    assert states.count("COMPLETE") == budget

    # A second worker on the same storage (its own output folder) finds the budget spent and
    # every row, the baselines too, in the study: it measures nothing and writes all the rows.
    task.calls.clear()
    other = make_args("--search_backend", "optuna", "--search_budget", str(budget),
                      "--search_min_length", str(min_length), "--search_rates", "0.9",
                      "--search_storage", f"sqlite:///{tmp_path / 'search.db'}")
    other_path = search.run_search_from_args(other, task, num_layers, max_length, task.full_macs,
                                             tmp_path / "worker2")
    assert task.calls == []
    first = {config_of(r): (r["backend"], r["f1"], r["macs"]) for r in read_csv(path)}
    assert {config_of(r): (r["backend"], r["f1"], r["macs"]) for r in read_csv(other_path)} == first


def test_optuna_budget_counts_a_queued_retry_numbered_before_a_new_trial():
    """The race seen with three workers: a killed worker's trial is queued again as trial 8 while
    7 trials are complete; another worker starts trial 9 before anyone pops 8. With budget 8,
    trial 9 must give way (8 is ahead of it); trial 8 may run. Counted by hand."""
    import optuna
    from optuna.distributions import IntDistribution
    from search.optuna_backend import budget_taken_before

    study = optuna.create_study(directions=["maximize", "minimize"])
    distributions = {"x0": IntDistribution(5, 30)}
    for value in range(8):  # trials 0-7; trial 1 is the killed worker's, failed by its heartbeat
        state = optuna.trial.TrialState.FAIL if value == 1 else optuna.trial.TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(
            params={"x0": 5 + value}, distributions=distributions, state=state,
            values=[1.0, 1.0] if state == optuna.trial.TrialState.COMPLETE else None))
    study.add_trial(optuna.trial.create_trial(  # trial 8: the retry, queued
        params={"x0": 6}, distributions=distributions, state=optuna.trial.TrialState.WAITING))
    # Trial 9, started while trial 8 still waits: 7 complete + the queued 8 are ahead of it.
    waiting = study.get_trials(deepcopy=False)
    assert budget_taken_before(waiting, 9, budget=8)
    assert not budget_taken_before(waiting, 9, budget=9)
    # The queued trial itself, popped by the next worker to ask: 7 complete ahead of it.
    assert study.ask().number == 8
    assert not budget_taken_before(study.get_trials(deepcopy=False), 8, budget=8)


# ----------------------------------------------------------------------------------------------
# Evolution
# ----------------------------------------------------------------------------------------------

def test_evolution_respects_space_budget_and_starts_from_lat_population(tmp_path):
    num_layers, max_length, min_length, budget = 6, 64, 10, 30
    task = SyntheticTask(num_layers, max_length)
    args = make_args("--search_backend", "evolution", "--search_budget", str(budget),
                     "--search_min_length", str(min_length), "--population_size", "5",
                     "--mutation_size", "4", "--crossover_size", "4", "--mutation_prob", "0.5",
                     "--search_rates", "1.0")  # no sweep configuration can pre-empt the population
    rows = read_csv(search.run_search_from_args(args, task, num_layers, max_length, task.full_macs, tmp_path))
    evo = [config_of(r) for r in rows if r["backend"] == "evolution"]
    assert len(evo) == budget  # the default evo_iter (100) is far more than 30 evaluations
    for config in evo:
        assert_in_space(config, num_layers, min_length, max_length)
    # LAT's start: the smallest configuration, then constant-drop configurations whose token
    # fractions are evenly spaced between the smallest and the full model.
    assert evo[0] == (min_length,) * num_layers
    lowest = min_length / max_length
    for k, config in enumerate(evo[1:6], start=1):
        target = lowest + (1 - lowest) * k / 6
        assert sum(config) / (num_layers * max_length) == pytest.approx(target, abs=2.0 / max_length)
        ratios = [b / a for a, b in zip((max_length,) + config, config) if b > min_length]
        assert max(ratios) - min(ratios) < 0.1  # a constant keep rate (up to rounding)


def test_evolution_front_fixes_lat_bugs():
    task = SyntheticTask(2, 10)
    args = make_args("--search_min_length", "1", "--search_budget", "100")
    store_rows = {
        (5, 5): (100, 50.0),
        (6, 4): (100, 60.0),  # same MACs, higher F1: (5, 5) must go (LAT compared MACs to a length)
        (9, 9): (300, 55.0),  # largest MACs but dominated by (6, 4): LAT always kept the last gene
        (2, 2): (40, 10.0),
    }

    class Store:
        def get(self, config):
            macs, f1 = store_rows[config]
            return {"macs": macs, "f1": f1, "eval_seconds": 0.0}

    evaluator = search.Evaluator(task, Store(), task.full_macs, "macs")
    evolution = search.EvolutionSearch(args, evaluator, search.SearchSpace(2, 1, 10))
    evolution.population = list(store_rows)
    assert evolution.pareto_frontier() == [(2, 2), (6, 4)]


def test_evolution_mutation_stays_in_bounds_and_gives_up_when_nothing_is_new(tmp_path):
    # A space with a single configuration: LAT's mutation loop would spin forever.
    task = SyntheticTask(3, 8)
    args = make_args("--search_backend", "evolution", "--search_min_length", "8", "--search_rates", "1.0",
                     "--evo_iter", "3", "--mutation_prob", "1.0")
    rows = read_csv(search.run_search_from_args(args, task, 3, 8, task.full_macs, tmp_path))
    assert [config_of(r) for r in rows] == [(8, 8, 8)]


# ----------------------------------------------------------------------------------------------
# SigOpt (real client, fake server)
# ----------------------------------------------------------------------------------------------

def test_sigopt_end_to_end_with_the_real_client(tmp_path, sigopt_env):
    num_layers, max_length, min_length, budget = 3, 40, 6, 8
    task = SyntheticTask(num_layers, max_length, fail_on=[(20, 20, 6)])
    cached = constant_rate_config(max_length, num_layers, 0.9)
    scripted = [{"x0": 30, "x1": 25, "x2": 7},
                {f"x{i}": v for i, v in enumerate(cached)},  # measured by the sweep: not re-evaluated
                {"x0": 20, "x1": 20, "x2": 6}]               # evaluation fails -> failed observation
    with FakeSigOpt(token="secret", seed=5, scripted=scripted) as server:
        sigopt_env.setenv("SIGOPT_API_TOKEN", "secret")
        sigopt_env.setenv("SIGOPT_API_URL", server.url)
        args = make_args("--search_backend", "sigopt", "--search_budget", str(budget),
                         "--search_min_length", str(min_length), "--search_rates", "1.0,0.9,0.8",
                         "--sigopt_parallel_bandwidth", "2", "--sigopt_project", "dtb")
        path = search.run_search_from_args(args, task, num_layers, max_length, task.full_macs, tmp_path)

    assert server.errors == []
    (experiment,) = server.experiments.values()
    assert [p["name"] for p in experiment["parameters"]] == ["x0", "x1", "x2"]
    assert all(p["type"] == "int" and p["bounds"] == {"min": min_length, "max": max_length}
               for p in experiment["parameters"])
    assert experiment["linear_constraints"] == [
        {"type": "less_than", "threshold": 0, "terms": [{"name": "x0", "weight": -1}, {"name": "x1", "weight": 1}]},
        {"type": "less_than", "threshold": 0, "terms": [{"name": "x1", "weight": -1}, {"name": "x2", "weight": 1}]},
    ]
    assert experiment["metrics"] == [{"name": "f1", "objective": "maximize", "strategy": "optimize"},
                                     {"name": "macs", "objective": "minimize", "strategy": "optimize"}]
    assert experiment["observation_budget"] == budget and experiment["parallel_bandwidth"] == 2
    assert experiment["project"] == "dtb"

    assert len(server.observations) == budget
    failed = [o for o in server.observations if o["failed"]]
    assert [tuple(o["assignments"].values()) for o in failed] == [(20, 20, 6)]
    rows = {config_of(r): r for r in read_csv(path)}
    for observation in server.observations:
        config = tuple(observation["assignments"][f"x{i}"] for i in range(num_layers))
        if observation["failed"]:
            assert config not in rows
            continue
        values = {v["name"]: v["value"] for v in observation["values"]}
        assert values["f1"] == pytest.approx(float(rows[config]["f1"]))
        assert values["macs"] == int(rows[config]["macs"]) == task.macs(config)
    sigopt_rows = [c for c, r in rows.items() if r["backend"] == "sigopt"]
    assert len(sigopt_rows) == budget - 2  # one cached, one failed
    assert cached not in sigopt_rows and rows[cached]["backend"] == "constant"
    assert task.calls.count(cached) == 1
    # The SigOpt rows are exactly the successful, non-cached observations, in order.
    observed = [tuple(o["assignments"][f"x{i}"] for i in range(num_layers)) for o in server.observations
                if not o["failed"]]
    assert sigopt_rows == [c for c in observed if c != cached]


def test_sigopt_resume_reuses_the_experiment_without_re_evaluating(tmp_path, sigopt_env):
    task = SyntheticTask(3, 40)
    budget = 6

    def interrupted_after_two_search_evals(config):
        if len([c for c in task.calls if c not in baseline]) >= 2 and tuple(config) not in baseline:
            raise KeyboardInterrupt
        return task(config)

    baseline = {(40, 40, 40), constant_rate_config(40, 3, 0.9)}
    with FakeSigOpt(token="t", seed=11) as server:
        sigopt_env.setenv("SIGOPT_API_TOKEN", "t")
        sigopt_env.setenv("SIGOPT_API_URL", server.url)
        args = make_args("--search_backend", "sigopt", "--search_budget", str(budget),
                         "--search_min_length", "6", "--search_rates", "1.0,0.9")
        with pytest.raises(KeyboardInterrupt):
            search.run_search_from_args(args, interrupted_after_two_search_evals, 3, 40, task.full_macs, tmp_path)
        assert len(read_csv(tmp_path / "search_results.csv")) == 4
        search.run_search_from_args(args, task, 3, 40, task.full_macs, tmp_path)
    assert server.errors == [] and len(server.experiments) == 1
    assert len(server.observations) == budget
    rows = read_csv(tmp_path / "search_results.csv")
    assert len(task.calls) == len(rows) == len({config_of(r) for r in rows})


def test_sigopt_refused_token_is_a_clear_error_and_keeps_rows(tmp_path, sigopt_env):
    task = SyntheticTask(3, 40)
    with FakeSigOpt(token="right") as server:
        sigopt_env.setenv("SIGOPT_API_TOKEN", "wrong")
        sigopt_env.setenv("SIGOPT_API_URL", server.url)
        args = make_args("--search_backend", "sigopt", "--search_min_length", "6", "--search_rates", "0.9")
        with pytest.raises(search.SigOptError, match="refused the API token") as info:
            search.run_search_from_args(args, task, 3, 40, task.full_macs, tmp_path)
    assert server.url in str(info.value)
    rows = read_csv(tmp_path / "search_results.csv")
    assert [config_of(r) for r in rows] == [(40, 40, 40), constant_rate_config(40, 3, 0.9)]
    assert len(task.calls) == 2


def test_sigopt_unreachable_is_a_clear_error_and_keeps_rows(tmp_path, sigopt_env):
    task = SyntheticTask(3, 40)
    search.run_search_from_args(make_args("--search_backend", "constant", "--search_min_length", "6"),
                                task, 3, 40, task.full_macs, tmp_path)
    before = [config_of(r) for r in read_csv(tmp_path / "search_results.csv")]
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    sigopt_env.setenv("SIGOPT_API_TOKEN", "t")
    sigopt_env.setenv("SIGOPT_API_URL", url)
    task.calls.clear()
    with pytest.raises(search.SigOptError, match="cannot reach the SigOpt API") as info:
        search.run_search_from_args(make_args("--search_backend", "sigopt", "--search_min_length", "6"),
                                    task, 3, 40, task.full_macs, tmp_path)
    assert url in str(info.value)
    assert task.calls == []
    assert [config_of(r) for r in read_csv(tmp_path / "search_results.csv")] == before


def test_sigopt_without_token_names_the_variable(tmp_path, sigopt_env):
    task = SyntheticTask(3, 40)
    with pytest.raises(ValueError, match="SIGOPT_API_TOKEN"):
        search.run_search_from_args(make_args("--search_backend", "sigopt", "--search_min_length", "6"), task, 3, 40,
                                    task.full_macs, tmp_path)
    assert task.calls == []


# ----------------------------------------------------------------------------------------------
# Shell entry point
# ----------------------------------------------------------------------------------------------

def test_run_sigopt_search_script_falls_back_to_optuna_and_passes_flags(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "argv.json"
    fake_python = bin_dir / "python"
    fake_python.write_text(f"#!/bin/sh\nexec {sys.executable} -c "
                           f"'import json, sys; json.dump(sys.argv[1:], open(\"{log}\", \"w\"))' \"$@\"\n")
    fake_python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "SIGOPT_API_TOKEN"}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", MODEL_DIR="m", BUDGET="7", SUBSET="100", LENGTH_SPACE="relative",
               BATCHING="sorted")
    result = subprocess.run(["bash", str(REPO_ROOT / "run-sigopt-search.sh"), "--search_seed", "3"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True)
    assert "SIGOPT_API_TOKEN is not set" in result.stdout
    argv = json.loads(log.read_text())
    assert Path(argv[0]).name == "run_squad.py" and Path(argv[0]).parent.resolve() == REPO_ROOT
    pairs = dict(zip(argv, argv[1:]))
    assert pairs["--search_backend"] == "optuna" and pairs["--search_budget"] == "7"
    assert pairs["--model_name_or_path"] == "m" and pairs["--search_subset"] == "100"
    assert pairs["--max_seq_length"] == "384" and pairs["--search_min_length"] == "91"
    assert pairs["--search_length_space"] == "relative" and pairs["--search_min_fraction"] == "0.25"
    assert pairs["--search_batching"] == "sorted"
    assert argv[-2:] == ["--search_seed", "3"] and "--do_search" in argv


def test_sigopt_second_worker_joins_the_shared_experiment(tmp_path, sigopt_env):
    task = SyntheticTask(3, 40)
    with FakeSigOpt(token="t", seed=2) as server:
        sigopt_env.setenv("SIGOPT_API_TOKEN", "t")
        sigopt_env.setenv("SIGOPT_API_URL", server.url)
        common = ["--search_backend", "sigopt", "--search_min_length", "6", "--search_rates", "1.0"]
        search.run_search_from_args(make_args(*common, "--search_budget", "4"), task, 3, 40, task.full_macs,
                                    tmp_path / "worker1")
        (experiment_id,) = server.experiments
        task.calls.clear()
        # The joined experiment's observation budget (4) is spent: worker 2 measures only its
        # full-length baseline and adds no observation.
        search.run_search_from_args(make_args(*common, "--sigopt_experiment_id", experiment_id),
                                    task, 3, 40, task.full_macs, tmp_path / "worker2")
        assert task.calls == [(40, 40, 40)]
        assert len(server.observations) == 4 and len(server.experiments) == 1
        # Worker 2's CSV holds worker 1's search rows, rebuilt from the observations' values and metadata.
        first = {config_of(r): r for r in read_csv(tmp_path / "worker1" / "search_results.csv")}
        second = {config_of(r): r for r in read_csv(tmp_path / "worker2" / "search_results.csv")}
        observed = {tuple(o["assignments"][f"x{i}"] for i in range(3)) for o in server.observations}
        assert observed <= set(second) and set(second) == set(first)
        for config in observed:
            assert float(second[config]["f1"]) == pytest.approx(task.f1(config))
            assert int(second[config]["macs"]) == task.macs(config)
            assert second[config]["backend"] == first[config]["backend"] == "sigopt"
        # A model with another number of layers cannot join it.
        with pytest.raises(ValueError, match="4 layers"):
            search.run_search_from_args(make_args(*common, "--sigopt_experiment_id", experiment_id),
                                        SyntheticTask(4, 40), 4, 40, 1, tmp_path / "worker3")
    assert server.errors == []


def test_optuna_fresh_storage_learns_rows_measured_before(tmp_path):
    task = SyntheticTask(3, 30)
    common = ["--search_backend", "optuna", "--search_min_length", "5", "--search_rates", "1.0"]
    search.run_search_from_args(make_args(*common, "--search_budget", "6"), task, 3, 30, task.full_macs, tmp_path)
    measured = sum(r["backend"] == "optuna" for r in read_csv(tmp_path / "search_results.csv"))
    (tmp_path / "search.db").unlink()  # storage lost, CSV kept
    task.calls.clear()
    # Another seed, so a study that ignored the CSV would not re-suggest the cached configurations.
    search.run_search_from_args(make_args(*common, "--search_budget", "9", "--search_seed", "7"),
                                task, 3, 30, task.full_macs, tmp_path)
    assert len(task.calls) <= 9 - measured and len(set(task.calls)) == len(task.calls)
    with sqlite3.connect(tmp_path / "search.db") as db:
        states = [s for (s,) in db.execute("select state from trials")]
    assert states.count("COMPLETE") == 9
