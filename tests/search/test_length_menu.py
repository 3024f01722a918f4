"""length_menu.py and inference.py --speedup / --max_f1_drop on hand-written menu files: the choice
for several budgets and ties, nothing meeting a budget, corrupt files, a menu of other weights."""
import copy
import json
from pathlib import Path

import pytest

import inference
from search import menu as menu_writer
from serving import menu as length_menu
from core.errors import UsageError
from helpers import run_inference_cli as run_cli
from helpers import make_tiny_tokenizer, save_tiny_bert, tiny_bert_config, tiny_squad_texts
from search_helpers import MENU


A, B, C, D, E = (tuple(e["length_config"]) for e in MENU["configurations"])
FULL = (128, 128, 128)


def write(path, menu):
    path.write_text(json.dumps(menu))
    return path


@pytest.fixture
def menu_file(tmp_path):
    return write(tmp_path / "length_configs.json", MENU)


@pytest.mark.parametrize("speedup, expected", [
    (0.5, FULL), (1.0, FULL),      # full length is on the menu and the most accurate
    (1.2, B),                      # A and B tie on F1: the faster
    (1.8, B), (2.0, C), (2.5, C),  # C and D tie exactly: the first in the file
    (4.0, E)])
def test_speedup_picks_the_most_accurate_fast_enough(menu_file, speedup, expected):
    menu = length_menu.load_menu(menu_file, 3)
    assert length_menu.choose(menu, speedup=speedup).length_config == expected


@pytest.mark.parametrize("drop, expected", [(0, FULL), (0.4, FULL), (0.5, B), (2, C), (9.9, C), (10, E), (50, E)])
def test_max_f1_drop_picks_the_fastest_accurate_enough(menu_file, drop, expected):
    menu = length_menu.load_menu(menu_file, 3)
    assert length_menu.choose(menu, max_f1_drop=drop).length_config == expected


def test_relative_menu_and_full_length_off_the_front(tmp_path):
    menu = copy.deepcopy(MENU)
    menu["length_space"] = "relative"
    menu["full"]["length_config"] = [1.0, 1.0, 1.0]
    for e, config in zip(menu["configurations"], ([0.9, 0.8, 0.7], [0.9, 0.7, 0.5], [0.8, 0.6, 0.4])):
        e["length_config"] = config
    menu["configurations"] = menu["configurations"][:3]
    loaded = length_menu.load_menu(write(tmp_path / "m.json", menu), 3)
    assert length_menu.choose(loaded, speedup=1.0).length_config == (1.0, 1.0, 1.0)
    assert length_menu.choose(loaded, speedup=1.6).length_config == (0.9, 0.7, 0.5)
    with pytest.raises(UsageError, match=r"the fastest is \[0.8, 0.6, 0.4\] at 2.50x with F1 78.00"):
        length_menu.choose(loaded, speedup=3)


def test_nothing_meets_the_budget_names_the_fastest(menu_file):
    menu = length_menu.load_menu(menu_file, 3)
    with pytest.raises(UsageError) as info:
        length_menu.choose(menu, speedup=4.5)
    message = str(info.value)
    assert "--speedup 4.5" in message and str(menu_file) in message
    assert "[64, 40, 30] at 4.00x with F1 70.00" in message and "\n" not in message


@pytest.mark.parametrize("change, words", [
    (lambda m: m.pop("configurations"), "field configurations is missing"),
    (lambda m: m["configurations"][1].update(f1="high"), "field configurations[1].f1 must be a finite number"),
    (lambda m: m["configurations"][2].pop("speedup"), "field configurations[2].speedup is missing"),
    (lambda m: m["configurations"][0].update(length_config=[100, 90]), "field configurations[0].length_config"),
    (lambda m: m["configurations"][0].update(length_config=[90, 100, 80]), "configurations[0].length_config"),
    (lambda m: m["full"].update(speedup=0), "field full.speedup must be positive"),
    (lambda m: m.update(length_space="relative"), "holds token counts but length_space is 'relative'"),
    (lambda m: m.update(speedup_basis="guess"), "field speedup_basis must be one of"),
    (lambda m: m.update(format="something"), "field format"),
    (lambda m: m.update(num_hidden_layers=4), "field num_hidden_layers is 4"),
    (lambda m: m["configurations"][3].pop("measured_speedup"), "configurations[3].measured_speedup is missing"),
    (lambda m: m.update(configurations=[]), "configurations must be a non-empty list"),
])
def test_corrupt_menu_names_the_file_and_field(tmp_path, change, words):
    menu = copy.deepcopy(MENU)
    change(menu)
    path = write(tmp_path / "length_configs.json", menu)
    with pytest.raises(UsageError) as info:
        length_menu.load_menu(path, 3)
    assert words in str(info.value) and str(path) in str(info.value)


def test_unreadable_or_missing_menu(tmp_path):
    path = tmp_path / "length_configs.json"
    with pytest.raises(UsageError, match="run-sigopt-search.sh"):
        length_menu.load_menu(path)
    path.write_text('{"format": ')
    with pytest.raises(UsageError, match="not a readable JSON file"):
        length_menu.load_menu(path)


def test_budget_flags_are_exclusive_and_checked(menu_file):
    with pytest.raises(UsageError, match="--length_config and --speedup"):
        length_menu.pick(menu_file.parent, 3, length_config=(60, 40, 30), speedup=2)
    with pytest.raises(UsageError, match="--speedup and --max_f1_drop"):
        length_menu.pick(menu_file.parent, 3, speedup=2, max_f1_drop=1)
    with pytest.raises(UsageError, match="--speedup must be a positive number"):
        length_menu.pick(menu_file.parent, 3, speedup=0)
    with pytest.raises(UsageError, match="--max_f1_drop must be"):
        length_menu.pick(menu_file.parent, 3, max_f1_drop=-1)
    with pytest.raises(UsageError, match="--menu is read only with"):
        length_menu.pick(menu_file.parent, 3, menu=menu_file)
    assert length_menu.pick(menu_file.parent, 3) is None


def test_build_menu_keeps_the_front_and_measures_speedups():
    rows = [{"length_config": c, "f1": f1, "exact_match": f1, "macs_ratio": r, "eval_seconds": s,
             "backend": b, "questions": 15}
            for c, f1, r, s, b in [((1.0, 1.0), 80.0, 1.0, 10.0, "full"), ((0.9, 0.8), 79.0, 1.2, 8.0, "optuna"),
                                   ((0.9, 0.7), 78.0, 1.3, 9.0, "optuna"),  # slower and worse than (0.9, 0.8)
                                   ((0.5, 0.5), 60.0, 2.0, 4.0, "constant")]]
    info = {"length_space": "relative", "batching": "sorted", "batch_size": 4, "max_seq_length": 128,
            "num_hidden_layers": 2}
    menu = menu_writer.build_menu(rows, (1.0, 1.0), info)
    assert menu["speedup_basis"] == "measured"
    assert [e["length_config"] for e in menu["configurations"]] == [[1.0, 1.0], [0.9, 0.8], [0.5, 0.5]]
    assert [e["speedup"] for e in menu["configurations"]] == [1.0, 1.25, 2.5]
    padded = menu_writer.build_menu(rows, (1.0, 1.0), dict(info, batching="padded"))
    assert padded["speedup_basis"] == "macs_ratio"
    assert [e["speedup"] for e in padded["configurations"]] == [1.0, 1.2, 1.3, 2.0]
    assert all(e["measured_speedup"] is None for e in padded["configurations"])


# --- through inference.py ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("menu_model")
    tok = make_tiny_tokenizer(root / "tok", tiny_squad_texts())
    config = tiny_bert_config(len(tok), num_hidden_layers=3, max_position_embeddings=512)
    return save_tiny_bert(root / "model", config, seed=5, tokenizer=tok)


QUESTION = ["--question", "Where did the cat sit?", "--context", "The cat sat on the mat in Paris.",
            "--max_seq_length", "128", "--doc_stride", "32", "--batch_size", "4"]


def test_cli_picks_from_the_model_menu_and_fails_clearly(model_dir, tmp_path):
    write(model_dir / "length_configs.json", MENU)
    proc = run_cli("--model", model_dir, *QUESTION, "--speedup", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "length configuration [100, 70, 50]" in proc.stderr and "2.50x faster" in proc.stderr
    assert "other settings" not in proc.stderr  # the menu's own max_seq_length, stride and batch size
    qa = inference.QuestionAnswerer.from_pretrained(model_dir, (100, 70, 50), max_seq_length=128, doc_stride=32,
                                                    batch_size=4)
    assert json.loads(proc.stdout) == qa.answer(QUESTION[1], QUESTION[3])

    proc = run_cli("--model", model_dir, *QUESTION, "--speedup", "5")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("inference.py: error: --speedup 5:") and "[64, 40, 30] at 4.00x" in line

    corrupt = copy.deepcopy(MENU)
    corrupt["configurations"][1]["f1"] = None
    other = write(tmp_path / "other.json", corrupt)
    proc = run_cli("--model", model_dir, *QUESTION, "--max_f1_drop", "1", "--menu", other)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert str(other) in line and "configurations[1].f1 is missing" in line

    proc = run_cli("--model", model_dir, *QUESTION, "--speedup", "2", "--length_config", "[60, 40, 30]")
    assert proc.returncode == 2 and "not allowed with" in proc.stderr


def test_menu_of_other_weights_or_none_is_refused(model_dir, tmp_path):
    menu = dict(MENU, weights_sha256="0" * 64)
    write(model_dir / "length_configs.json", menu)
    with pytest.raises(UsageError, match="other weights"):
        inference.QuestionAnswerer.from_pretrained(model_dir, max_f1_drop=1, max_seq_length=128)
    (model_dir / "length_configs.json").unlink()
    proc = run_cli("--model", model_dir, *QUESTION, "--max_f1_drop", "1")
    assert proc.returncode == 2 and "run-sigopt-search.sh" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_read_only_model_folder_falls_back_to_the_output_dir(tmp_path, monkeypatch):
    import errno

    from core import files

    real = files.atomic_write_json

    def refuse_model_folder(path, obj):
        if Path(path).parent.name == "model":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        real(path, obj)

    monkeypatch.setattr(files, "atomic_write_json", refuse_model_folder)
    written = menu_writer.write_menu(MENU, tmp_path / "model" / "length_configs.json", tmp_path / "out")
    assert written == tmp_path / "out" / "length_configs.json"
    assert length_menu.load_menu(written, 3).full.f1 == 80.0


def test_retime_front_times_only_the_fronts_interleaved_and_keeps_the_median():
    """Rows of a search whose one-by-one times were disturbed: C's time (1 s) is spurious. The
    re-timing takes the full row and the rows on the F1-against-time or F1-against-MACs front,
    times them round-robin, keeps each median, and leaves the rest out of the menu."""
    from search.menu import build_menu, retime_front

    def row(config, f1, seconds, macs_ratio):
        return {"length_config": config, "f1": f1, "exact_match": f1, "macs_ratio": macs_ratio,
                "eval_seconds": seconds, "backend": "optuna", "questions": 10}
    full = (1.0, 1.0)
    rows = [row(full, 80.0, 10.0, 1.0), row((1.0, 0.8), 79.5, 8.0, 1.2), row((1.0, 0.5), 70.0, 1.0, 1.5),
            row((1.0, 0.9), 79.0, 9.5, 1.1)]  # the last is on neither front (A dominates it both ways)
    calls = []
    measured = {full: [10, 12, 11], (1.0, 0.8): [8, 7, 9], (1.0, 0.5): [7, 5, 6]}

    def time_fn(config):
        calls.append(config)
        return measured[config][sum(c == config for c in calls) - 1]

    retimed = retime_front(rows, full, time_fn, repeats=3)
    assert calls == [full, (1.0, 0.8), (1.0, 0.5)] * 3  # round-robin
    assert {r["length_config"]: r["eval_seconds"] for r in retimed} == {full: 11, (1.0, 0.8): 8, (1.0, 0.5): 6}
    menu = build_menu(retimed, full, {"length_space": "relative", "batching": "sorted", "batch_size": 32,
                                      "max_seq_length": 384, "num_hidden_layers": 2})
    assert [(c["length_config"], round(c["speedup"], 4)) for c in menu["configurations"]] == [
        ([1.0, 1.0], 1.0), ([1.0, 0.8], round(11 / 8, 4)), ([1.0, 0.5], round(11 / 6, 4))]
