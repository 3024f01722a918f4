"""A search shared by workers on several machines through one PostgreSQL study.

Worker processes with output folders of their own stand in for machines (tests/search_worker.py,
the synthetic evaluation of test_search with a sleep); the server is tests/postgres_server.py's
(skips when there is none). References: the synthetic task's own F1 and MACs, a brute-force
Pareto front, and the same rows measured by one worker.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import search
import search.collect as search_collect
from helpers import REPO_ROOT, subprocess_env
import postgres_server as _postgres
from search_worker import MAX_LENGTH, MEASURED_ON, NUM_LAYERS
from search_helpers import SyntheticTask, brute_force_pareto, config_of, make_args, read_csv

postgres_server, postgres_url = _postgres.postgres_server, _postgres.postgres_url  # fixtures
WORKER = REPO_ROOT / "tests" / "search_worker.py"
BUDGET = 8


def worker_flags(url: str, study: str) -> list[str]:
    return ["--search_backend", "optuna", "--search_budget", str(BUDGET), "--search_min_length", "5",
            "--search_rates", "1.0,0.9,0.8", "--search_storage", url, "--search_study_name", study,
            "--search_heartbeat", "2"]


def start_worker(tmp_path: Path, name: str, flags: list[str], **spec) -> subprocess.Popen:
    spec = {"argv": flags, "output_dir": str(tmp_path / name), "log": str(tmp_path / f"{name}.log"),
            "sleep": 0.1, **spec}
    spec_path = tmp_path / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    with open(tmp_path / f"{name}.out", "w") as out:
        return subprocess.Popen([sys.executable, str(WORKER), str(spec_path)], stdout=out, stderr=subprocess.STDOUT,
                                env=subprocess_env())


def wait_for(path: Path, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"worker ended (exit {process.returncode}) before its trial"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.1)


def logged(path: Path) -> list[tuple]:
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()] if path.exists() else []


def collect(url: str, study: str, output_dir: Path, capsys) -> tuple[int, str]:
    """``python -m search.collect`` (its main, in this process): exit code and stderr."""
    capsys.readouterr()
    code = search_collect.main(["--search_storage", url, "--search_study_name", study,
                                "--output_dir", str(output_dir)])
    return code, capsys.readouterr().err


def study_trials(url: str, study: str):
    import optuna

    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def one_worker_front(configs: list[tuple], tmp_path: Path) -> list[tuple]:
    """The front of the same rows measured one after another by one process in its own folder."""
    task = SyntheticTask(NUM_LAYERS, MAX_LENGTH)
    space = search.SearchSpace(NUM_LAYERS, 5, MAX_LENGTH)
    store = search.ResultStore(tmp_path / "one_worker" / search.RESULTS_CSV, space)
    evaluator = search.Evaluator(task, store, task.full_macs, "macs", space=space)
    for config in configs:
        evaluator.measure(config, "optuna")
    search.finalize_outputs(store, "macs", tmp_path / "one_worker", [1.0, 0.9, 0.8], space, {})
    return [config_of(r) for r in read_csv(tmp_path / "one_worker" / search.FRONT_CSV)]


@pytest.mark.long(15)
def test_three_workers_one_killed_share_one_front(postgres_url, tmp_path, capsys):
    study = "shared-search"
    flags = worker_flags(postgres_url, study)
    hang = tmp_path / "killed_config.json"
    doomed = start_worker(tmp_path, "worker3", flags, hang_marker=str(hang))
    workers = [start_worker(tmp_path, name, flags) for name in ("worker1", "worker2")]
    wait_for(hang, doomed, timeout=120)
    os.kill(doomed.pid, signal.SIGKILL)  # mid-trial: its trial stays RUNNING in the study
    doomed.wait(timeout=30)
    for worker, name in zip(workers, ("worker1", "worker2")):
        assert worker.wait(timeout=240) == 0, (tmp_path / f"{name}.out").read_text()[-3000:]
    killed_config = tuple(json.loads(hang.read_text()))

    code, err = collect(postgres_url, study, tmp_path / "collected", capsys)
    assert code == 0, err
    rows = read_csv(tmp_path / "collected" / search.RESULTS_CSV)
    configs = [config_of(r) for r in rows]
    measured = set()
    for name in ("worker1", "worker2", "worker3"):
        measured |= set(logged(tmp_path / f"{name}.log"))
    # Every measured row once; the killed worker's configuration measured by another worker.
    assert len(configs) == len(set(configs)) and set(configs) == measured
    assert killed_config in measured - set(logged(tmp_path / "worker3.log"))
    task = SyntheticTask(NUM_LAYERS, MAX_LENGTH)
    for row in rows:
        assert float(row["f1"]) == pytest.approx(task.f1(config_of(row)))
        assert int(row["macs"]) == task.macs(config_of(row))

    # The killed trial failed (heartbeat), its configuration ran again and counted once.
    trials = study_trials(postgres_url, study)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(complete) == BUDGET
    assert [tuple(t.user_attrs["length_config"]) for t in failed] == [killed_config]
    assert [tuple(t.user_attrs["length_config"]) for t in complete].count(killed_config) == 1

    # The front: a brute-force one over the synthetic values, and the same rows by one worker.
    front = [config_of(r) for r in read_csv(tmp_path / "collected" / search.FRONT_CSV)]
    flags_ = brute_force_pareto([(task.f1(c), task.macs(c)) for c in configs])
    assert sorted(front) == sorted(c for c, keep in zip(configs, flags_) if keep)
    assert front == one_worker_front(configs, tmp_path)
    # Each surviving worker wrote every row too; the collected menu is the front's.
    for name in ("worker1", "worker2"):
        assert sorted(config_of(r) for r in read_csv(tmp_path / name / search.RESULTS_CSV)) == sorted(configs)
    menu = json.loads((tmp_path / "collected" / "length_configs.json").read_text())
    assert menu["weights_sha256"] == MEASURED_ON["weights_sha256"]
    assert {tuple(e["length_config"]) for e in menu["configurations"]} <= set(front)
    assert menu["full"]["length_config"] == [MAX_LENGTH] * NUM_LAYERS


def test_other_weights_are_refused_by_the_study_and_the_collector(postgres_url, tmp_path, capsys):
    study = "refusals"
    task = SyntheticTask(NUM_LAYERS, MAX_LENGTH)
    args = make_args(*worker_flags(postgres_url, study), "--search_budget", "2")
    search.run_search_from_args(args, task, NUM_LAYERS, MAX_LENGTH, task.full_macs, tmp_path / "a",
                                measured_on=MEASURED_ON)
    task.calls.clear()
    with pytest.raises(ValueError, match="weights_sha256"):
        search.run_search_from_args(args, task, NUM_LAYERS, MAX_LENGTH, task.full_macs, tmp_path / "b",
                                    measured_on=dict(MEASURED_ON, weights_sha256="other"))
    assert task.calls == []
    # A folder holding rows of other weights is not overwritten by the collector.
    search.run_search_from_args(make_args("--search_backend", "constant", "--search_min_length", "5"), task,
                                NUM_LAYERS, MAX_LENGTH, task.full_macs, tmp_path / "c",
                                measured_on=dict(MEASURED_ON, weights_sha256="other"))
    before = (tmp_path / "c" / search.RESULTS_CSV).read_bytes()
    code, err = collect(postgres_url, study, tmp_path / "c", capsys)
    assert code == 2 and "weights_sha256" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "c" / search.RESULTS_CSV).read_bytes() == before
    # A study of another name: one line naming the flag and the studies there.
    code, err = collect(postgres_url, "no-such-study", tmp_path / "d", capsys)
    assert code == 2 and "--search_study_name" in err and study in err


OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
import search
from core.errors import UsageError
from search.optuna_backend import open_study
from search.study_rows import search_description
from search_helpers import make_args

url, weights, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
space = search.SearchSpace(3, 5, 30)
args = make_args("--search_backend", "optuna", "--search_storage", url, "--search_study_name", "race")
time.sleep(max(start - time.time(), 0))
try:
    open_study(args, Path("."), space, {"weights_sha256": weights}, search_description("macs", space, [1.0], None))
    print("searching", weights)
except UsageError as err:
    print("refused", weights, err)
"""


def test_workers_of_two_models_opening_a_new_database_at_once(postgres_url, tmp_path):
    """Six workers (three per model) start on a new database at one instant: each opens the
    storage (no "cannot open" from the race creating Optuna's tables), the workers of one model
    search, those of the other are refused naming the weights."""
    start = time.time() + 3
    processes = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, postgres_url, weights, str(start)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                                  env=subprocess_env())
                 for weights in ("aaaa", "bbbb") * 3]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * 6, outputs
    lines = [output.strip().splitlines()[-1] for output in outputs]
    searching = {line.split()[1] for line in lines if line.startswith("searching")}
    assert len(searching) == 1, lines
    refused = [line for line in lines if line.startswith("refused")]
    assert len(refused) == 3 and all("measured on something else" in line and "weights_sha256" in line
                                     for line in refused), lines
    assert not any("Traceback" in output for output in outputs)
