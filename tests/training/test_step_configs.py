"""configs/*.args, the paper's four training steps as argument files: each holds exactly the flags
of README.md's command for its step but the folders, and run_squad.py's @FILE syntax. Parsing only:
no model is loaded."""
import re
import shlex

import pytest

from helpers import REPO_ROOT
from training.flags import build_parser

# Folders name the user's machine: on the command line, not in the files.
FOLDER_FLAGS = ("--data_dir", "--model_name_or_path", "--teacher_model_name_or_path", "--output_dir")
FOLDERS = {"SQUAD_DIR": "squad", "GENERAL_TINYBERT_DIR": "general_tinybert", "OUTPUT_DIR": "out"}
FILES = {1: "configs/step1_teacher.args", 2: "configs/step2_intermediate.args",
         3: "configs/step3_prediction.args", 4: "configs/step4_length_drop.args"}


def readme_steps_section() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    return text.split("\n## The paper's steps\n", 1)[1].split("\n## ", 1)[0]


def words(command: str) -> list[str]:
    """The command's words as the shell gives them to run_squad.py, $VARIABLES set to FOLDERS."""
    for name in sorted(FOLDERS, key=len, reverse=True):
        command = command.replace("$" + name, FOLDERS[name])
    tokens = shlex.split(command.replace("\\\n", " "))
    return tokens[2:] if tokens[:2] == ["python", "run_squad.py"] else tokens


def flag_values(tokens: list[str]) -> dict[str, list[str]]:
    """{--flag: its value words}, in order; every word of these commands is a flag or a value."""
    flags: dict[str, list[str]] = {}
    for token in tokens:
        if token.startswith("--"):
            assert token not in flags, f"{token} given twice"
            flags[token] = []
        else:
            flags[list(flags)[-1]].append(token)
    return flags


def argv(flags: dict[str, list[str]]) -> list[str]:
    return [word for flag, values in flags.items() for word in (flag, *values)]


def readme_commands() -> dict[int, dict[str, list[str]]]:
    """Each step's flags as README.md gives them: steps 1 and 2 written out, steps 3 and 4 "as step
    N but `...`" (a flag named there replaces step N's value or is added)."""
    section = readme_steps_section()
    commands = {}
    for step in FILES:
        written = re.search(rf"^Step {step},[^\n]*:\n```bash\n(.*?)```", section, re.S | re.M)
        if written:
            commands[step] = flag_values(words(written.group(1)))
            continue
        changed = re.search(rf"^Step {step},[^\n]*: as step (\d) but `([^`]*)`", section, re.S | re.M)
        assert changed, f"README.md: no command for step {step}"
        commands[step] = {**commands[int(changed.group(1))], **flag_values(words(changed.group(2)))}
    return commands


def readme_short_form(step: int) -> list[str]:
    after_step = readme_steps_section().split(f"\nStep {step},", 1)[1]
    block = re.search(r"Short form:\n```bash\n(.*?)```", after_step, re.S)
    assert block, f"README.md: no short form for step {step}"
    return words(block.group(1))


def file_flags(path) -> dict[str, list[str]]:
    parser = build_parser()
    return flag_values([w for line in path.read_text().splitlines() for w in parser.convert_arg_line_to_args(line)])


@pytest.fixture(autouse=True)
def in_repo_root(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # @configs/... is relative to where run_squad.py runs


@pytest.mark.parametrize("step", sorted(FILES))
def test_each_file_parses_as_the_readme_command(step):
    readme = readme_commands()[step]
    folders = {flag: values for flag, values in readme.items() if flag in FOLDER_FLAGS}
    assert {"--model_name_or_path", "--output_dir"} <= set(folders)
    from_readme = build_parser().parse_args(argv(readme))
    from_file = build_parser().parse_args(["@" + FILES[step], *argv(folders)])
    assert vars(from_file) == vars(from_readme)
    # Flags set to their defaults (--model_type bert) count too: the file names exactly the README's.
    assert file_flags(REPO_ROOT / FILES[step]) == {f: v for f, v in readme.items() if f not in FOLDER_FLAGS}


@pytest.mark.parametrize("step", sorted(FILES))
def test_readme_short_form_is_the_full_command(step):
    short = readme_short_form(step)
    assert short[0] == "@" + FILES[step]
    assert vars(build_parser().parse_args(short)) == vars(build_parser().parse_args(argv(readme_commands()[step])))


def test_flags_after_the_file_override_it():
    args = build_parser().parse_args(["@" + FILES[4], "--model_name_or_path", "m", "--output_dir", "o",
                                      "--learning_rate", "1e-4", "--model_type", "bert", "--sandwich_full_weight", "0.5"])
    assert (args.learning_rate, args.sandwich_full_weight, args.num_sandwich) == (1e-4, 0.5, 2)


def test_comments_blank_lines_and_quoted_values(tmp_path):
    path = tmp_path / "my flags.args"
    path.write_text("# a comment: --do_train\n\n   \n  # indented comment\n"
                    "--length_config '[384, 320, 256]'\n--learning_rate 3e-5 --do_eval\n")
    args = build_parser().parse_args([f"@{path}", "--model_name_or_path", "m", "--output_dir", "o"])
    assert args.length_config == "[384, 320, 256]"
    assert (args.learning_rate, args.do_eval, args.do_train) == (3e-5, True, False)


def test_missing_file_is_a_usage_error_naming_it(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["@configs/no_such_step.args", "--model_name_or_path", "m", "--output_dir", "o"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in error and "configs/no_such_step.args" in error


def test_unclosed_quote_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "bad.args"
    path.write_text("--length_config '[384, 320\n")
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([f"@{path}", "--model_name_or_path", "m", "--output_dir", "o"])
    assert exit_.value.code == 2
    assert "--length_config '[384, 320" in capsys.readouterr().err
