"""bfloat16 on the torch serving backend: ``precision="bf16"`` / ``--bf16`` runs a bfloat16 copy
of the weights (token scorers float32; the caller's model untouched), its logits agree with
float32's within bfloat16's rounding and its answers are float32's wherever float32's best span
leads by more than that rounding, at full length and at length configurations of both drop
criteria. The comparisons skip where the CPU has no bfloat16 instructions (emulated bfloat16 is
correct but slow; ``core.machine.bf16_problem``)."""
import json
import warnings

import numpy as np
import pytest
import torch

import inference
import utils_squad
from core import machine
from core.errors import UsageError
from core.forward import TorchLogits
from core.models import load_model
from helpers import TINY_SQUAD_DIR, make_tiny_tokenizer, run_inference_cli, save_learned_tiny_bert, tiny_squad_texts
from serving.settings import ServingSettings

WINDOW = {"max_seq_length": 128, "doc_stride": 32, "max_query_length": 64}
# bfloat16 keeps 8 significant bits (relative rounding 2**-8 = 0.4%) in every matmul's inputs;
# through 3 layers the logits move by at most this share of their spread over real tokens.
LOGIT_TOLERANCE = 0.05

needs_bf16 = pytest.mark.skipif(machine.bf16_problem() is not None,
                                reason=f"bfloat16 comparisons need bfloat16 hardware: {machine.bf16_problem()}")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    tok = make_tiny_tokenizer(root / "tok", tiny_squad_texts())
    learned = save_learned_tiny_bert(root, tok)  # scorers drawn wide: their ranking decides what is kept
    return {"attention": root / "plain", "learned": learned}


@pytest.fixture(scope="module")
def examples():
    return utils_squad.read_squad_examples(TINY_SQUAD_DIR / "dev-v1.1.json", is_training=False)


@needs_bf16
@pytest.mark.parametrize("criterion", ["attention", "learned"])
@pytest.mark.parametrize("length_config", [None, (1.0, 0.7, 0.4)])
def test_bf16_logits_and_answers_are_float32s(folders, examples, criterion, length_config):
    """Logits within LOGIT_TOLERANCE of their spread, and not identical (bfloat16 ran). An answer
    may differ only where float32 itself ranks bfloat16's answer within the rounding of its best
    (start + end logits, each off by at most the largest error seen): on these random tiny
    models spans nearly tie. The learned criterion's scores are float32, so its kept tokens are
    float32's and the bound holds at length configurations too."""
    answerers = {precision: inference.QuestionAnswerer.from_pretrained(
        folders[criterion], length_config=length_config, precision=precision, **WINDOW)
        for precision in ("fp32", "bf16")}
    features = answerers["fp32"].features(examples)
    real = np.asarray(features.attention_mask, dtype=bool)
    fp32, bf16 = (answerers[p].logits(features) for p in ("fp32", "bf16"))
    largest_error = 0.0
    for want, got in zip(fp32, bf16):
        spread = want[real].std()
        error = np.abs(got[real] - want[real]).max()
        assert 0 < error <= LOGIT_TOLERANCE * spread, (error, spread)
        largest_error = max(largest_error, error)
    (want, want_nbest), (got, _) = answerers["fp32"].predict(examples), answerers["bf16"].predict(examples)
    changed = [qas_id for qas_id in want if got[qas_id] != want[qas_id]]
    assert len(changed) <= len(want) // 10, changed
    for qas_id in changed:
        scores = {n["text"]: n["start_logit"] + n["end_logit"] for n in want_nbest[qas_id]}
        assert scores[want[qas_id]] - scores[got[qas_id]] <= 4 * largest_error, qas_id


def test_bf16_runs_a_bfloat16_copy_and_leaves_the_model_as_it_was(folders):
    """The weights run in bfloat16, the token scorers in float32, and the caller's model (which may
    be in training) stays float32; autocast ("bf16-autocast") casts nothing."""
    model = load_model(folders["learned"])
    forward = TorchLogits(model, (1.0, 0.7, 0.4), precision="bf16")
    assert forward.model is not model
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    scorers = {n for n, _ in forward.model.named_parameters() if ".token_scorers." in n}
    dtypes = {n: p.dtype for n, p in forward.model.named_parameters()}
    assert scorers and {dtypes[n] for n in scorers} == {torch.float32}
    assert {d for n, d in dtypes.items() if n not in scorers} == {torch.bfloat16}
    assert TorchLogits(model, precision="bf16-autocast").model is model
    with pytest.raises(ValueError, match="precision must be one of"):
        TorchLogits(model, precision="int4")


def test_bf16_flag_reaches_the_settings_and_is_refused_off_the_torch_backend():
    parse = inference.build_parser().parse_args
    assert ServingSettings.from_args(parse(["--model", "m", "--bf16"])).precision == "bf16"
    assert ServingSettings.from_args(parse(["--model", "m"])).precision == "fp32"
    with pytest.raises(UsageError, match="--bf16 .* --backend onnxruntime"):
        ServingSettings(precision="bf16", backend="onnxruntime", onnx_path="f.onnx")
    with pytest.raises(UsageError, match="--bf16 .* --int8"):
        ServingSettings(precision="bf16", int8=True)
    with pytest.raises(UsageError, match="precision must be one of fp32, bf16"):
        ServingSettings(precision="fp16")


def test_without_bf16_hardware_it_says_so_in_one_line(folders, monkeypatch):
    """The API warns (RuntimeWarning), the command line prints one line and still answers."""
    monkeypatch.setattr(machine, "cpu_flags", lambda path="/proc/cpuinfo": {"avx2", "fma"})
    problem = machine.bf16_problem()
    assert "no bfloat16 instructions" in problem and "\n" not in problem
    with pytest.warns(RuntimeWarning, match="no bfloat16 instructions"):
        inference.QuestionAnswerer.from_pretrained(folders["attention"], precision="bf16", **WINDOW)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32 says nothing
        inference.QuestionAnswerer.from_pretrained(folders["attention"], **WINDOW)
    done = run_inference_cli("--model", folders["attention"], "--bf16", "--question", "Who wrote it?",
                             "--context", "Jane Austen wrote it.", "--max_seq_length", 128)
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "bfloat16" in line]
    assert warned == [f"inference.py: warning: {problem}"]
    assert set(json.loads(done.stdout)) == {"answer", "score", "start", "end"}


def test_flags_parse_on_machines_with_and_without_bf16(monkeypatch):
    """The hardware check reads the CPU's flags: AVX512_BF16 or AMX-BF16 on x86, BF16 on ARM."""
    for flags, native in [({"avx2", "avx512_bf16"}, True), ({"amx_bf16"}, True), ({"bf16", "asimd"}, True),
                          ({"avx2", "avx512f", "avx512_vnni"}, False)]:
        assert (machine.bf16_problem(flags) is None) == native, flags
