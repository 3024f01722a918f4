"""CUDA paths, run only where a GPU is present (skipped elsewhere): SDPA and the explicit
attention paths against the CPU, fp16 training with loss scaling, bf16 training, and torchrun
with one process against a plain run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import run_squad
from helpers import TINY_SQUAD_DIR, make_tiny_tokenizer, save_tiny_bert, tiny_bert_config, tiny_squad_texts
from modeling_bert import BertForQuestionAnswering

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    tok = make_tiny_tokenizer(root / "tok", tiny_squad_texts())
    model = save_tiny_bert(root / "model", tiny_bert_config(len(tok), num_hidden_layers=3, hidden_size=64,
                                                            intermediate_size=128, max_position_embeddings=512),
                           seed=0, tokenizer=tok)
    return {"root": root, "tok": tok, "model": model}


def padded_batch(vocab_size: int, lengths, seq_len: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab_size, (len(lengths), seq_len), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        ids[row, n:] = 0
    return ids, mask, torch.zeros_like(ids)


@pytest.mark.parametrize("length_config", [None, (40, 25, 12)])
def test_cuda_forward_matches_cpu_with_padding(tiny, length_config):
    """Padded batches on the GPU (SDPA with a boolean mask at full length, the chunked path when
    tokens are dropped) give the CPU's logits on every real position."""
    model = BertForQuestionAnswering.from_pretrained(str(tiny["model"])).eval()
    ids, mask, types = padded_batch(len(tiny["tok"]), [48, 31, 17, 48], 48)
    with torch.no_grad():
        cpu = model(ids, mask, types, length_config=length_config)
        gpu = model.cuda()(ids.cuda(), mask.cuda(), types.cuda(), length_config=length_config)
    real = mask.bool()
    for a, b in ((cpu.start_logits, gpu.start_logits), (cpu.end_logits, gpu.end_logits)):
        torch.testing.assert_close(b.cpu()[real], a[real], atol=2e-4, rtol=1e-3)


def test_cuda_training_path_matches_cpu(tiny):
    """The explicit attention path (scores and probabilities returned, autograd on) agrees on
    GPU and CPU, gradients included."""
    torch.manual_seed(0)
    results = []
    for device in ("cpu", "cuda"):
        model = BertForQuestionAnswering.from_pretrained(str(tiny["model"])).to(device).eval()
        ids, mask, types = (t.to(device) for t in padded_batch(len(tiny["tok"]), [40, 22], 40))
        out = model(ids, mask, types, output_attention_scores=True, output_attentions=True,
                    start_positions=torch.tensor([3, 5], device=device),
                    end_positions=torch.tensor([6, 9], device=device))
        out.loss.backward()
        results.append((out.loss.item(), model.qa_outputs.weight.grad.cpu(),
                        out.attention_scores[1].cpu(), out.attentions[1].cpu()))
    (loss_c, grad_c, scores_c, probs_c), (loss_g, grad_g, scores_g, probs_g) = results
    assert loss_g == pytest.approx(loss_c, rel=1e-4)
    torch.testing.assert_close(grad_g, grad_c, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(scores_g, scores_c, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(probs_g, probs_c, atol=1e-5, rtol=1e-3)


def tiny_train_args(tiny, out, *extra):
    return [str(a) for a in (
        "--data_dir", TINY_SQUAD_DIR, "--model_name_or_path", tiny["model"], "--output_dir", out,
        "--max_seq_length", "128", "--doc_stride", "32", "--overwrite_output_dir", "--do_train", "--do_eval",
        "--predict_file", "train-v1.1.json", "--per_gpu_train_batch_size", "8", "--per_gpu_eval_batch_size", "64",
        "--learning_rate", "1e-3", "--warmup_ratio", "0.05", "--logging_steps", "0", "--save_steps", "0", *extra)]


@pytest.mark.parametrize("precision", ["--fp16", "--bf16"])
def test_mixed_precision_training_learns_on_cuda(tiny, tmp_path, precision):
    """fp16 (autocast with a GradScaler) and bf16 autocast train the tiny model to answer its own
    training questions, as fp32 does on the CPU (tests/test_run_squad.py), and keep fp32 weights."""
    out = tmp_path / precision.strip("-")
    assert run_squad.main(tiny_train_args(tiny, out, precision, "--num_train_epochs", "150")) == 0
    f1 = json.loads((out / "eval_results.json").read_text())["f1"]
    assert f1 >= 90.0, f1
    from safetensors.torch import load_file
    weights = load_file(out / "checkpoint-last" / "model.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    state = torch.load(out / "checkpoint-last" / run_squad.TRAINING_STATE, weights_only=True)
    assert ("scaler" in state) == (precision == "--fp16")


def test_sandwich_with_bf16_on_cuda(tiny, tmp_path):
    """Step 4's sandwich (LayerDrop, token dropping in training) runs under bf16 on the GPU and
    moves the weights; its full-length evaluation stays a valid F1."""
    out = tmp_path / "sandwich"
    args = tiny_train_args(tiny, out, "--bf16", "--max_steps", "8", "--length_adaptive", "--num_sandwich", "2",
                           "--layer_dropout_prob", "0.2")
    assert run_squad.main(args) == 0
    from safetensors.torch import load_file
    before = load_file(tiny["model"] / "model.safetensors")
    after = load_file(out / "checkpoint-last" / "model.safetensors")
    assert max((after[k] - before[k]).abs().max().item() for k in before if k in after) > 1e-4
    assert 0.0 <= json.loads((out / "eval_results.json").read_text())["f1"] <= 100.0


def test_torchrun_one_process_matches_plain_run_on_cuda(tiny, tmp_path):
    """`torchrun --nproc_per_node 1` (NCCL, DDP wrapper) trains the same weights as a plain run."""
    model = save_tiny_bert(tmp_path / "nodrop",
                           tiny_bert_config(len(tiny["tok"]), num_hidden_layers=2, hidden_dropout_prob=0.0,
                                            attention_probs_dropout_prob=0.0, max_position_embeddings=512),
                           seed=3, tokenizer=tiny["tok"])

    def argv(out):
        a = tiny_train_args({"model": model}, out, "--max_steps", "3")
        a.remove("--do_eval")
        return a

    assert run_squad.main(argv(tmp_path / "plain")) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           str(Path(run_squad.__file__)), *argv(tmp_path / "torchrun")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file
    a = load_file(tmp_path / "plain" / "checkpoint-last" / "model.safetensors")
    b = load_file(tmp_path / "torchrun" / "checkpoint-last" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)
