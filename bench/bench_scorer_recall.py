"""How much of the answer a token scorer can keep, layer by layer: the ceiling of learned token
selection on a frozen model.

The model runs at full length on training questions; at each dropping layer (1 to L-1) a scorer
is fitted on that layer's input hidden states of the context's real tokens ([CLS], the question
and the [SEP]s are never dropped), with the fit stage's loss (class-weighted binary cross-entropy
against the gold span, ``training.distillation``), and measured on later, disjoint training
questions: keeping the top fraction ``f`` of each feature's context tokens, the share of answer
tokens kept and the share of answers whose first and last tokens are both kept. Each layer is
measured on its full-length input (no earlier layer dropped anything), so this is an upper bound
for a cascade of selections.

Two scorers: ``linear`` (the model's ``--token_scorer linear``) and ``bilinear``, a linear term
plus a rank-64 product of the token and the mean of the question's hidden states (a scorer that
sees the question; not a model option, measured here to see whether the question is what the
early layers' scorers lack).

    python -m bench.bench_scorer_recall --model DIR --train_file train-v1.1-subset.json \\
        --fit_questions 1500 --test_questions 800 --output scorer_recall.json
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import utils_squad
from core import files, machine
from core.models import load_model, load_tokenizer
from modeling_bert import protected_tokens
from training.distillation import gold_answer_tokens


class LinearScorer(torch.nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.token = torch.nn.Linear(hidden, 1)

    def forward(self, tokens, question):
        return self.token(tokens).squeeze(-1)


class BilinearScorer(torch.nn.Module):
    """``w . h + (P h) . (Q q)``, ``q`` the mean of the question tokens' hidden states."""

    def __init__(self, hidden: int, rank: int = 64):
        super().__init__()
        self.token = torch.nn.Linear(hidden, 1)
        self.p = torch.nn.Linear(hidden, rank, bias=False)
        self.q = torch.nn.Linear(hidden, rank)

    def forward(self, tokens, question):
        return self.token(tokens).squeeze(-1) + (self.p(tokens) * self.q(question)).sum(-1)


SCORERS = {"linear": LinearScorer, "bilinear": BilinearScorer}


SCORER_INPUTS = ("layer_input", "attention_output")


def attention_outputs(model) -> tuple[dict, list]:
    """Forward hooks keeping each layer's attention block output (after its LayerNorm), the
    states a layer that selects after its attention could score instead of its input."""
    captured, handles = {}, []
    for index, layer in enumerate(model.bert.encoder.layer):
        handles.append(layer.attention.register_forward_hook(
            lambda module, args, output, index=index: captured.__setitem__(index, output[0])))
    return captured, handles


def layer_inputs(model, features, rows, batch_size: int = 64, scorer_input: str = "layer_input") -> dict:
    """Per dropping layer l: a list over features of (context tokens' hidden states [n, H], mean
    of the question tokens' [H], gold answer flags [n]), from the full-length forward; the states
    are layer l's input, or with ``scorer_input="attention_output"`` its attention block's output."""
    layers = range(1, model.config.num_hidden_layers)
    out = {layer: [] for layer in layers}
    captured, handles = attention_outputs(model) if scorer_input == "attention_output" else ({}, [])
    with torch.no_grad():
        for i in tqdm(range(0, len(rows), batch_size), desc="hidden states", leave=False):
            r = rows[i:i + batch_size]
            width = int(features.attention_mask[r].sum(1).max())
            ids, mask, types = (t[r][:, :width] for t in
                                (features.input_ids, features.attention_mask, features.token_type_ids))
            hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=types,
                           output_hidden_states=True).hidden_states
            protected = protected_tokens(mask, types, ids)
            context = (mask != 0) & ~protected
            question = protected & (types == 0)
            question[:, 0] = False  # [CLS]
            targets = gold_answer_tokens(features.start_positions[r], features.end_positions[r], width)
            weights = question.float().unsqueeze(-1)
            for layer in layers:
                h = captured[layer] if captured else hidden[layer]
                mean_question = (h * weights).sum(1) / weights.sum(1).clamp(min=1)
                for b in range(len(r)):
                    out[layer].append((h[b][context[b]], mean_question[b], targets[b][context[b]]))
    for handle in handles:
        handle.remove()
    return out


def fit(kind: str, data: list, epochs: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    tokens = torch.cat([h for h, _, _ in data])
    question = torch.cat([q.expand(len(h), -1) for h, q, _ in data])
    targets = torch.cat([t for _, _, t in data])
    scorer = SCORERS[kind](tokens.size(1))
    optimizer = torch.optim.Adam(scorer.parameters(), lr=1e-3)
    pos_weight = ((len(targets) - targets.sum()) / targets.sum().clamp(min=1)).clamp(min=1)
    for _ in range(epochs):
        order = torch.randperm(len(targets))
        for i in range(0, len(targets), 4096):
            j = order[i:i + 4096]
            loss = F.binary_cross_entropy_with_logits(scorer(tokens[j], question[j]), targets[j],
                                                      pos_weight=pos_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return scorer


def recall(scorer, data: list, fraction: float) -> dict:
    """Over features holding an answer: answer tokens kept / answer tokens, and answers with both
    ends kept / answers, keeping ``ceil(fraction * context tokens)`` per feature."""
    kept = total = both = answers = 0
    with torch.no_grad():
        for tokens, question, targets in data:
            answer = targets > 0
            if not bool(answer.any()):
                continue
            scores = scorer(tokens, question.expand(len(tokens), -1))
            keep = torch.zeros(len(tokens), dtype=torch.bool)
            keep[scores.topk(max(1, math.ceil(fraction * len(tokens)))).indices] = True
            kept += int((keep & answer).sum())
            total += int(answer.sum())
            ends = answer.nonzero().squeeze(1)
            both += int(keep[ends[0]] and keep[ends[-1]])
            answers += 1
    return {"answer_tokens_kept": kept / total, "answers_with_both_ends": both / answers, "answers": answers}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a fine-tuned QA checkpoint (its backbone is used frozen)")
    p.add_argument("--train_file", required=True, help="SQuAD training file (answers needed)")
    p.add_argument("--fit_questions", type=int, default=1500)
    p.add_argument("--test_questions", type=int, default=800, help="the questions after the fitted ones")
    p.add_argument("--fractions", default="0.5,0.3,0.15", help="context fractions kept, comma list")
    p.add_argument("--scorers", default="linear,bilinear")
    p.add_argument("--scorer_input", default="layer_input", choices=SCORER_INPUTS,
                   help="the states scored at layer l: its input (the model's), or its attention block's "
                   "output (what a layer selecting after its attention could score)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--max_seq_length", type=int, default=256)
    p.add_argument("--doc_stride", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True)
    a = p.parse_args(argv)
    try:
        fractions = [float(f) for f in a.fractions.split(",")]
    except ValueError:
        fractions = []
    kinds = a.scorers.split(",")
    unknown = [k for k in kinds if k not in SCORERS]
    if unknown or not fractions or not all(0 < f <= 1 for f in fractions):
        print(f"bench_scorer_recall.py: error: --scorers from {sorted(SCORERS)}, --fractions in (0, 1]; "
              f"got {a.scorers!r}, {a.fractions!r}", file=sys.stderr)
        return 2
    files.check_output_file(a.output, "--output")
    torch.set_num_threads(a.threads)
    tokenizer = load_tokenizer(a.model, True)
    _, features = utils_squad.load_or_build_features(
        a.train_file, tokenizer, max_seq_length=a.max_seq_length, doc_stride=a.doc_stride, is_training=True,
        cache_dir=a.cache_dir, max_examples=a.fit_questions + a.test_questions)
    model = load_model(a.model).eval()
    example = features.example_index
    fitted = layer_inputs(model, features, (example < a.fit_questions).nonzero().squeeze(1),
                          scorer_input=a.scorer_input)
    tested = layer_inputs(model, features, (example >= a.fit_questions).nonzero().squeeze(1),
                          scorer_input=a.scorer_input)
    rows = []
    for layer in fitted:
        for kind in kinds:
            start = time.perf_counter()
            scorer = fit(kind, fitted[layer], a.epochs, a.seed)
            row = {"layer": layer, "scorer": kind,
                   "keep": {str(f): recall(scorer, tested[layer], f) for f in fractions}}
            rows.append(row)
            print(f"layer {layer} {kind:8s} " + "  ".join(
                f"keep {f}: tokens {r['answer_tokens_kept']:.3f}, both ends {r['answers_with_both_ends']:.3f}"
                for f, r in row["keep"].items()) + f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    files.atomic_write_json(a.output, {
        "command": "python -m bench.bench_scorer_recall " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine.machine_info(), "model": a.model, "scorer_input": a.scorer_input,
        "fit_questions": a.fit_questions,
        "test_questions": a.test_questions, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
