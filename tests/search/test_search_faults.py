"""A shared Optuna search under faults: workers that start at once, a worker killed or stalled in a
trial, a storage that goes away, a password in the storage URL. The synthetic task of
test_search (no model); references: the study's own trial states and the CSV's rows."""
from __future__ import annotations

import threading

import pytest

import search
import search.optuna_backend as optuna_backend
from core.errors import StoreError, UsageError
from search.study_rows import StudyRows, search_description
from search_helpers import SyntheticTask, config_of, make_args, read_csv

NUM_LAYERS, MAX_LENGTH = 3, 30


def optuna_args(*extra: str):
    return make_args("--search_backend", "optuna", "--search_min_length", "5", "--search_rates", "1.0",
                     *extra)


def test_workers_of_two_models_starting_one_new_study_at_once_one_is_refused(tmp_path, monkeypatch):
    """Both workers read the study's attributes before either writes (the race of two machines):
    exactly one searches on, the other is refused naming the difference."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    space = search.SearchSpace(NUM_LAYERS, 5, MAX_LENGTH)
    description = search_description("macs", space, [1.0], None)
    barrier = threading.Barrier(2, timeout=3)
    first_read = threading.local()
    attrs = StudyRows._attrs

    def read_together(self):
        if not getattr(first_read, "done", False):
            first_read.done = True
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass
        return attrs(self)

    monkeypatch.setattr(StudyRows, "_attrs", read_together)
    outcomes: dict[str, object] = {}

    def worker(weights: str) -> None:
        args = optuna_args("--search_storage", url, "--search_study_name", "race")
        try:
            optuna_backend.open_study(args, tmp_path / weights, space, {"weights_sha256": weights}, description)
            outcomes[weights] = "searching"
        except UsageError as err:
            outcomes[weights] = str(err)

    threads = [threading.Thread(target=worker, args=(w,)) for w in ("aaaa", "bbbb")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["aaaa", "bbbb"]
    searching = [w for w, outcome in outcomes.items() if outcome == "searching"]
    assert len(searching) == 1, outcomes
    refused = next(outcome for outcome in outcomes.values() if outcome != "searching")
    assert "measured on something else" in refused and "weights_sha256" in refused
    import optuna

    recorded = optuna.load_study(study_name="race", storage=url).user_attrs["measured_on"]
    assert recorded == {"weights_sha256": searching[0]}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask() below, outside optimize
def test_workers_in_one_folder_draw_with_seeds_of_their_own(tmp_path):
    """The default storage (the folder's search.db) too: the study's creator keeps --search_seed
    (a single search is reproducible), every other worker mixes it, and all lie constant."""
    space = search.SearchSpace(NUM_LAYERS, 5, MAX_LENGTH)
    description = search_description("macs", space, [1.0], None)
    args = optuna_args("--search_seed", "11")
    first, _, first_details = optuna_backend.open_study(args, tmp_path, space, None, description)
    second, _, second_details = optuna_backend.open_study(args, tmp_path, space, None, description)
    assert first_details["sampler_seed"] == 11
    assert second_details["sampler_seed"] != 11
    assert first.sampler._constant_liar and second.sampler._constant_liar
    draws = []
    for study in (first, second):
        trial = study.ask()
        draws.append(tuple(trial.suggest_int(f"x{i}", 5, MAX_LENGTH) for i in range(NUM_LAYERS)))
    assert draws[0] != draws[1]


def test_a_trial_that_never_beat_is_failed_and_the_search_ends(tmp_path):
    """A worker killed between Optuna creating its trial and the first heartbeat: the RUNNING
    trial without a heartbeat row is failed and queued again; the others finish the budget."""
    import optuna

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    storage, _ = optuna_backend.open_storage(url, heartbeat=1)
    study = optuna.create_study(study_name="orphan", storage=storage, directions=["maximize", "minimize"])
    storage.create_new_trial(study._study_id)  # RUNNING, never beats
    task = SyntheticTask(NUM_LAYERS, MAX_LENGTH)
    args = optuna_args("--search_budget", "3", "--search_storage", url, "--search_study_name", "orphan",
                       "--search_heartbeat", "1")
    done = []
    thread = threading.Thread(daemon=True, target=lambda: done.append(search.run_search_from_args(
        args, task, NUM_LAYERS, MAX_LENGTH, task.full_macs, tmp_path / "worker")))
    thread.start()
    thread.join(60)
    assert done, "the search still waits for the trial that never beat"
    trials = optuna.load_study(study_name="orphan", storage=url).get_trials(deepcopy=False)
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 3


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://user:hunter2@127.0.0.1:1/db?connect_timeout=1",
    "postgresql+psycopg://user@127.0.0.1:1/db?password=hunter2&connect_timeout=1",
    "postgresql+psycopg://user@127.0.0.1:1/db?connect_timeout=1&password=hunter2",
])
def test_storage_password_is_hidden_however_given(url):
    assert "hunter2" not in optuna_backend.redact_url(url)
    assert "***" in optuna_backend.redact_url(url)
    with pytest.raises(UsageError, match="--search_storage: cannot open") as raised:
        optuna_backend.open_storage(url)
    assert "hunter2" not in str(raised.value) and "127.0.0.1" in str(raised.value)


@pytest.mark.parametrize("orig, kind", [
    ('relation "studies" already exists', "ProgrammingError"),  # PostgreSQL: DuplicateTable
    ('type "studydirection" already exists', "ProgrammingError"),  # PostgreSQL: DuplicateObject
    ("table studies already exists", "OperationalError"),  # SQLite
])
def test_open_storage_survives_tables_created_by_another_worker_at_once(tmp_path, monkeypatch, orig, kind):
    import optuna
    import sqlalchemy.exc

    real, calls = optuna.storages.RDBStorage, []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise getattr(sqlalchemy.exc, kind)("CREATE TABLE studies ...", {}, Exception(orig))
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    storage, where = optuna_backend.open_storage(f"sqlite:///{tmp_path / 'new.db'}")
    assert len(calls) == 2 and isinstance(storage, real)


def test_storage_lost_mid_search_stops_with_one_line_and_keeps_the_rows(tmp_path, monkeypatch):
    from optuna.storages._rdb import storage as rdb_storage
    import sqlalchemy.exc

    real_session, down = rdb_storage._create_scoped_session, []

    def session(*args, **kwargs):
        if down:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        return real_session(*args, **kwargs)

    monkeypatch.setattr(rdb_storage, "_create_scoped_session", session)
    task = SyntheticTask(NUM_LAYERS, MAX_LENGTH)
    calls = []

    def evaluate(config):
        calls.append(config)
        if len(calls) == 3:  # the server stops during the third measurement
            down.append(1)
        return task(config)

    args = optuna_args("--search_budget", "6", "--search_storage", f"sqlite:///{tmp_path / 'shared.db'}")
    with pytest.raises(StoreError) as raised:
        search.run_search_from_args(args, evaluate, NUM_LAYERS, MAX_LENGTH, task.full_macs, tmp_path)
    message = str(raised.value)
    assert "\n" not in message and "the same command" in message and "OperationalError" in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    # Every measured row is kept, the one measured as the server stopped too.
    assert [config_of(row) for row in read_csv(tmp_path / "search_results.csv")] == [tuple(c) for c in calls]


def test_a_late_result_for_a_trial_queued_again_is_dropped_and_the_search_goes_on(tmp_path, caplog):
    """A stalled worker (a suspended machine): while it measures, another worker fails its trial
    (no heartbeat) and queues it again. Its result is dropped with a warning; the budget fills."""
    import optuna
    from optuna.trial import TrialState

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    task = SyntheticTask(NUM_LAYERS, MAX_LENGTH)
    args = optuna_args("--search_budget", "4", "--search_storage", url, "--search_study_name", "late")

    def evaluate(config):
        if len(task.calls) == 2:  # the first optuna trial: failed by "another worker" meanwhile
            other = optuna.storages.RDBStorage(url)
            study = optuna.load_study(study_name="late", storage=other)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                other.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        return task(config)

    with caplog.at_level("WARNING", logger="search"):
        search.run_search_from_args(args, evaluate, NUM_LAYERS, MAX_LENGTH, task.full_macs, tmp_path)
    assert "late result is dropped" in caplog.text
    trials = optuna.load_study(study_name="late", storage=url).get_trials(deepcopy=False)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
