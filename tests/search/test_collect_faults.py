"""``python -m search.collect`` checks its output places before any work, as run_squad.py does
(the same ``core.files`` checks), and a full disk is one line: never a traceback, never outputs
written before the refusal. The study is an SQLite one written by a search on the synthetic task
(test_search's), so no server is needed."""
import errno
import os

import pytest

import search
import search.collect as search_collect
from core import files
from search_helpers import SyntheticTask, make_args

STUDY = "collect-faults"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """An SQLite study holding a finished search's rows (the synthetic task, budget 3)."""
    root = tmp_path_factory.mktemp("collect")
    url = f"sqlite:///{root / 'search.db'}"
    task = SyntheticTask(3, 40)
    args = make_args("--search_backend", "optuna", "--search_budget", "3", "--search_min_length", "6",
                     "--search_rates", "1.0,0.8", "--search_storage", url, "--search_study_name", STUDY)
    search.run_search_from_args(args, task, 3, 40, task.full_macs, root / "worker",
                                measured_on={"weights_sha256": "a" * 64, "predict_file_sha256": "b" * 64})
    return url


def collect(capsys, url, output_dir, *extra):
    capsys.readouterr()
    code = search_collect.main(["--search_storage", url, "--search_study_name", STUDY,
                                "--output_dir", str(output_dir), *map(str, extra)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("search.collect: error:")]
    return code, lines, err


@pytest.fixture
def nothing_opens(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the storage was opened before the output places were checked")
    monkeypatch.setattr(search_collect, "load_study", refuse)


def places(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)  # mode bits: refused even for root
    return blocker, read_only


@pytest.mark.parametrize("case", ["is_a_file", "under_a_file", "read_only", "proc", "dev_null"])
def test_a_bad_output_dir_is_refused_before_the_storage_opens(tmp_path, capsys, nothing_opens, case):
    blocker, read_only = places(tmp_path)
    out, words = {"is_a_file": (blocker, "is a file, not a folder"),
                  "under_a_file": (blocker / "out", "which is a file"),
                  "read_only": (read_only / "out", "is not writable"),
                  "proc": ("/proc/collect-out", "/proc is not writable"),
                  "dev_null": ("/dev/null", "is not a folder")}[case]
    code, lines, err = collect(capsys, "sqlite:///unused.db", out)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert f"--output_dir {out}" in lines[0] and words in lines[0], lines[0]
    assert list(read_only.iterdir()) == [] and blocker.read_text() == "a file"


@pytest.mark.parametrize("case", ["folder", "under_a_file", "proc", "dev_null", "read_only"])
def test_a_bad_search_menu_is_refused_before_the_storage_opens(tmp_path, capsys, nothing_opens, case):
    blocker, read_only = places(tmp_path)
    menu, words = {"folder": (tmp_path, "is a folder"), "under_a_file": (blocker / "m.json", "is not a folder"),
                   "proc": ("/proc/m.json", "/proc is not writable"),
                   "dev_null": ("/dev/null", "exists and is not a regular file"),
                   "read_only": (read_only / "m.json", "is not writable")}[case]
    out = tmp_path / "out"
    code, lines, err = collect(capsys, "sqlite:///unused.db", out, "--search_menu", menu)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert f"--search_menu {menu}" in lines[0] and words in lines[0], lines[0]
    assert not out.exists()  # nothing written before the refusal


def test_a_full_disk_is_one_line_and_what_is_written_is_whole(study, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert collect(capsys, study, tmp_path / "first")[0] == 0  # the study does collect
    real = files.atomic_write_text

    def full(path, text):
        if os.path.basename(str(path)) == "search_summary.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(search.front, "atomic_write_text", full)
    code, lines, err = collect(capsys, study, out)
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert "no space left" in lines[0] and str(out) in lines[0], lines[0]
    assert (out / "search_results.csv").read_bytes() == (tmp_path / "first" / "search_results.csv").read_bytes()
    assert not list(out.glob(".*"))  # no temporaries left
