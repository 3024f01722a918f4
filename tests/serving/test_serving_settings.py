"""ServingSettings: the command line and the API build the same settings with the same checks."""
import dataclasses

import pytest

import inference
from core.errors import UsageError
from serving.settings import ServingSettings


def test_command_line_defaults_are_the_api_defaults():
    args = inference.build_parser().parse_args(["--model", "m"])
    assert ServingSettings.from_args(args) == ServingSettings()


def test_every_command_line_flag_reaches_the_settings():
    argv = ["--model", "m", "--length_config", "[1.0, 0.5]", "--max_seq_length", "256", "--doc_stride", "64",
            "--max_query_length", "32", "--n_best_size", "5", "--max_answer_length", "12", "--batch_size", "4",
            "--pad_to_max_length", "--backend", "onnxruntime", "--onnx", "f.onnx", "--threads", "2"]
    settings = ServingSettings.from_args(inference.build_parser().parse_args(argv))
    assert dataclasses.asdict(settings) == {**dataclasses.asdict(ServingSettings()), **dict(
        length_config="[1.0, 0.5]", max_seq_length=256, doc_stride=64, max_query_length=32, n_best_size=5,
        max_answer_length=12, batch_size=4, pad_to_max_length=True, backend="onnxruntime", onnx_path="f.onnx",
        threads=2)}


@pytest.mark.parametrize("flags, flag", [
    (dict(threads=0), "--threads"),
    (dict(batch_size=0), "--batch_size"),
    (dict(batch_size=True), "--batch_size"),
    (dict(backend="tensorrt"), "--backend"),
    (dict(speedup=2.0, max_f1_drop=1.0), "--max_f1_drop"),
    (dict(speedup=-1.0), "--speedup"),
    (dict(menu="m.json"), "--menu"),
])
def test_bad_settings_are_refused_naming_the_flag(flags, flag):
    with pytest.raises(UsageError, match=flag):
        ServingSettings(**flags)


def test_the_api_refuses_bad_settings_before_reading_the_folder(tmp_path):
    missing = tmp_path / "no-such-model"  # never read: the settings are refused first
    with pytest.raises(UsageError, match="--batch_size"):
        inference.QuestionAnswerer.from_pretrained(missing, batch_size=0)
