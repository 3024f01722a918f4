"""The learned drop criterion: token scorers in the model, checked against transformers' BERT run
on the tokens the scorer should keep, torchprofile's MACs and hand-computed losses."""
import json

import pytest
import torch
import transformers

import modeling_bert
from length_drop import analytic_macs, profile_macs
from modeling_bert import SCORERS_FILE, BertForQuestionAnswering, protected_tokens
from training import distillation
from helpers import tiny_bert_config

L = 16  # tokens: [CLS] 4 question tokens [SEP] 9 context tokens [SEP]
TYPES = torch.tensor([[0] * 6 + [1] * 10])


def learned_model(num_hidden_layers=1, **config):
    torch.manual_seed(0)
    config = tiny_bert_config(num_hidden_layers=num_hidden_layers, drop_criterion="learned", **config)
    return BertForQuestionAnswering(config).eval()


def transformers_twin(model):
    """transformers' BertForQuestionAnswering with the same backbone and head."""
    twin = transformers.BertForQuestionAnswering(model.config).eval()
    missing, unexpected = twin.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith(modeling_bert.SCORERS_PREFIX)},
        strict=False)
    assert not unexpected and all("pooler" in k for k in missing)
    return twin


def expected_kept(model, ids, keep):
    """The tokens layer 0 keeps, worked out by hand: every protected token ([CLS], question,
    both [SEP]s), then the context tokens of highest linear score on the embeddings."""
    with torch.no_grad():
        embeddings = model.bert.embeddings(input_ids=ids, token_type_ids=TYPES)[0]
        scorer = model.bert.encoder.token_scorers[0].net
        scores = embeddings @ scorer.weight[0] + scorer.bias[0]
    protected = [i for i in range(L) if TYPES[0, i] == 0 or i == L - 1]
    context = sorted((i for i in range(L) if i not in protected), key=lambda i: -float(scores[i]))
    return sorted(protected + context[:keep - len(protected)])


def test_protected_tokens_hand_made():
    mask = torch.tensor([[1] * 7 + [0], [1] * 8])
    types = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1, 1]])
    got = protected_tokens(mask, types, torch.zeros_like(mask))
    assert got.tolist() == [[True, True, True, False, False, False, True, False],
                            [True, True, False, False, False, False, False, True]]


@pytest.mark.parametrize("before", [False, True])
def test_selection_matches_transformers_on_the_kept_tokens(before):
    """One layer keeping 10 of 16 tokens. Kept tokens: after attention (the paper's place) their
    logits are transformers' at full length (attention saw every token, the feed-forward block is
    per token); before attention they are transformers' run on the kept tokens alone, at their own
    positions. Dropped tokens keep their embedding, so their logits are the head on it."""
    model = learned_model(select_before_attention=before)
    ids = torch.randint(5, 120, (1, L))
    kept = expected_kept(model, ids, keep=10)
    dropped = [i for i in range(L) if i not in kept]
    twin = transformers_twin(model)
    with torch.no_grad():
        ours = model(ids, torch.ones_like(ids), TYPES, length_config=[10])
        if before:
            # transformers' embeddings at the kept tokens' own positions, then its encoder layers with
            # no mask (transformers >= 5.25 reads gaps in position_ids given to the whole model as
            # the boundaries of packed sequences, so position_ids cannot go in at the top)
            index = torch.tensor([kept])
            embedded = twin.bert.embeddings(input_ids=ids[:, kept], token_type_ids=TYPES[:, kept], position_ids=index)
            theirs = twin.qa_outputs(twin.bert.encoder(embedded).last_hidden_state)[..., 0]
        else:
            theirs = twin(input_ids=ids, token_type_ids=TYPES).start_logits
        head = model.qa_outputs(model.bert.embeddings(input_ids=ids, token_type_ids=TYPES))
    want_kept = theirs[0] if before else theirs[0, kept]
    torch.testing.assert_close(ours.start_logits[0, kept], want_kept, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.start_logits[0, dropped], head[0, dropped, 0], atol=1e-5, rtol=1e-5)


def transformers_attention_outputs(twin, ids):
    """Each layer's attention block output in transformers' own BERT at full length (hooks)."""
    captured = {}
    handles = [layer.attention.register_forward_hook(
        lambda module, args, output, index=index: captured.__setitem__(index, output[0]))
        for index, layer in enumerate(twin.bert.encoder.layer)]
    with torch.no_grad():
        logits = twin(input_ids=ids, token_type_ids=TYPES).start_logits
    for handle in handles:
        handle.remove()
    return captured, logits


def hand_scores(scorer, states):
    """A linear or bilinear scorer's logits on ``states [L, H]``, by hand: ``w . h + b``, plus
    ``(P h) . (Q q + c)`` with ``q`` the mean of the question's states (positions 1-5: the question
    and its [SEP])."""
    scores = states @ scorer.net.weight[0] + scorer.net.bias[0]
    if scorer.kind == "bilinear":
        asked = states[1:6].mean(dim=0)
        question = scorer.question_projection.weight @ asked + scorer.question_projection.bias
        scores = scores + (states @ scorer.token_projection.weight.T) @ question
    return scores


@pytest.mark.parametrize("kind, reads", [("linear", "attention_output"), ("bilinear", "layer_input"),
                                         ("bilinear", "attention_output")])
def test_scorer_kinds_and_inputs_keep_the_hand_ranked_tokens(kind, reads):
    """One layer keeping 10 of 16 tokens, selecting after its attention: the kept tokens are the
    protected ones and the context tokens of highest score, computed by hand on transformers' own
    embeddings or attention output; their logits are transformers' at full length, the dropped
    tokens' the head on their embedding."""
    model = learned_model(token_scorer=kind, token_scorer_input=reads)
    ids = torch.randint(5, 120, (1, L))
    twin = transformers_twin(model)
    attention, theirs = transformers_attention_outputs(twin, ids)
    with torch.no_grad():
        embedded = twin.bert.embeddings(input_ids=ids, token_type_ids=TYPES)[0]
        states = attention[0][0] if reads == "attention_output" else embedded
        scores = hand_scores(model.bert.encoder.token_scorers[0], states)
        ours = model(ids, torch.ones_like(ids), TYPES, length_config=[10])
        head = model.qa_outputs(embedded)[:, 0]
    protected = [i for i in range(L) if TYPES[0, i] == 0 or i == L - 1]
    context = sorted((i for i in range(L) if i not in protected), key=lambda i: -float(scores[i]))
    kept = sorted(protected + context[:10 - len(protected)])
    dropped = [i for i in range(L) if i not in kept]
    torch.testing.assert_close(ours.start_logits[0, kept], theirs[0, kept], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.start_logits[0, dropped], head[dropped], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("reads", ["layer_input", "attention_output"])
def test_scorer_states_are_what_each_scorer_reads(reads):
    """``output_scorer_states`` (what the scorers' training loss ranks) at full length: each layer's
    input, or transformers' attention output of that layer."""
    model = learned_model(num_hidden_layers=2, token_scorer_input=reads)
    ids = torch.randint(5, 120, (1, L))
    attention, _ = transformers_attention_outputs(transformers_twin(model), ids)
    with torch.no_grad():
        out = model(ids, torch.ones_like(ids), TYPES, output_scorer_states=True, output_hidden_states=True)
    for layer in range(2):
        want = attention[layer] if reads == "attention_output" else out.hidden_states[layer]
        torch.testing.assert_close(out.scorer_states[layer], want, atol=1e-5, rtol=1e-5)


def test_scorer_input_is_recorded_and_a_mismatch_refused(tmp_path):
    from core.checks import describe_selection, token_selection

    model = learned_model(token_scorer_input="attention_output")
    selection = token_selection(model.config)
    assert selection == {"drop_criterion": "learned", "select_before_attention": False,
                         "token_scorer_input": "attention_output"}
    assert token_selection({"drop_criterion": "learned"}) == {"drop_criterion": "learned",
                                                              "select_before_attention": False}
    assert "attention output" in describe_selection(selection)
    model.save_pretrained(tmp_path)
    assert BertForQuestionAnswering.from_pretrained(tmp_path).bert.encoder.token_scorers[0].reads_attention_output
    with pytest.raises(ValueError, match="trained on each layer's attention output; the config asks for scorers reading its input"):
        BertForQuestionAnswering.from_pretrained(tmp_path, token_scorer_input="layer_input")
    with pytest.raises(ValueError, match="cannot go with select_before_attention"):
        learned_model(token_scorer_input="attention_output", select_before_attention=True)


def test_attention_criterion_unchanged_by_the_new_options():
    """A model without the learned criterion has no scorers and computes what it always did."""
    torch.manual_seed(0)
    config = tiny_bert_config(num_hidden_layers=2)
    plain = BertForQuestionAnswering(config).eval()
    assert plain.bert.encoder.token_scorers is None and plain.drop_criterion == "attention"
    ids = torch.randint(5, 120, (2, L))
    with torch.no_grad():
        a = plain(ids, torch.ones_like(ids), TYPES.expand(2, -1), length_config=[12, 8]).start_logits
        learned = learned_model(num_hidden_layers=2)
        learned.load_state_dict(plain.state_dict(), strict=False)
        b = learned(ids, torch.ones_like(ids), TYPES.expand(2, -1), length_config=[12, 8]).start_logits
    assert not torch.allclose(a, b)  # the criterion changes which tokens survive
    with torch.no_grad():
        full_a = plain(ids, torch.ones_like(ids), TYPES.expand(2, -1)).start_logits
        full_b = learned(ids, torch.ones_like(ids), TYPES.expand(2, -1)).start_logits
    torch.testing.assert_close(full_a, full_b)  # at full length the scorers are not used


@pytest.mark.parametrize("scorer, before, reads", [
    ("linear", False, "layer_input"), ("mlp", False, "layer_input"), ("linear", True, "layer_input"),
    ("mlp", True, "layer_input"), ("bilinear", False, "layer_input"), ("bilinear", True, "layer_input"),
    ("linear", False, "attention_output"), ("bilinear", False, "attention_output")])
def test_analytic_macs_agree_with_torchprofile_learned(scorer, before, reads):
    model = learned_model(num_hidden_layers=3, hidden_size=32, intermediate_size=40, token_scorer=scorer,
                          select_before_attention=before, token_scorer_input=reads)
    attention_config = tiny_bert_config(num_hidden_layers=3, hidden_size=32, intermediate_size=40)
    for length_config in [None, (100, 70, 40), (80, 80, 30)]:
        want = profile_macs(model, 100, length_config)
        got = analytic_macs(model.config, 100, length_config)
        assert abs(got - want) <= 1e-3 * want, (length_config, got, want)
        if length_config is not None and not before:  # the scorers' own MACs are counted
            extra = got - analytic_macs(attention_config, 100, length_config)
            width = {"linear": 32, "mlp": 32 * 8 + 8, "bilinear": 2 * 32 + 32 * 64 + 64}[scorer]
            selecting = [n for n, k in zip((100, *length_config), length_config) if k < n]
            per_sequence = 32 * 64 if scorer == "bilinear" else 0  # the question's projection
            assert extra == width * sum(selecting) + per_sequence * len(selecting)


def test_scorers_saved_beside_the_weights_and_transformers_loads_cleanly(tmp_path):
    model = learned_model(num_hidden_layers=2, token_scorer="mlp")
    model.save_pretrained(tmp_path)
    assert (tmp_path / SCORERS_FILE).is_file()
    assert json.loads((tmp_path / "config.json").read_text())["drop_criterion"] == "learned"
    from safetensors import safe_open
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "token_scorers" in k]
    again = BertForQuestionAnswering.from_pretrained(tmp_path).eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    _, info = transformers.BertForQuestionAnswering.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]


def test_a_learned_folder_without_its_scorers_is_refused(tmp_path):
    learned_model().save_pretrained(tmp_path)
    (tmp_path / SCORERS_FILE).unlink()
    with pytest.raises(ValueError, match=SCORERS_FILE):
        BertForQuestionAnswering.from_pretrained(tmp_path)


def test_answer_token_targets_hand_computed():
    gold = distillation.gold_answer_tokens(torch.tensor([2, 0]), torch.tensor([3, 0]), 5)
    assert gold.tolist() == [[0, 0, 1, 1, 0], [0, 0, 0, 0, 0]]  # no answer in the second window
    start = torch.log(torch.tensor([[0.5, 0.5, 0.0]]) + 1e-30)
    end = torch.log(torch.tensor([[0.0, 0.5, 0.5]]) + 1e-30)
    # P(start <= t) = [.5, 1, 1]; P(end >= t) = [1, 1, .5]
    torch.testing.assert_close(distillation.soft_answer_tokens(start, end), torch.tensor([[0.5, 1.0, 0.5]]))


def test_token_scorer_loss_hand_computed():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    counted = torch.tensor([[True, True, True, False]])
    # one positive, two negatives counted: positives weigh 2; mean over the 3 counted tokens
    sig = torch.sigmoid
    want = -(2 * torch.log(sig(torch.tensor(2.0))) + torch.log(1 - sig(torch.tensor(-1.0)))
             + torch.log(1 - sig(torch.tensor(0.5)))) / 3
    got = distillation.token_scorer_loss([logits, logits], targets, counted)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("before", [False, True])
def test_keep_fractions_per_example_do_not_depend_on_the_batch(before):
    """Under the learned criterion too, an example's answer at keep fractions is the one it gets
    alone: ceil(f * its own length) tokens per layer, not a share of its batch's longest."""
    model = learned_model(num_hidden_layers=3, select_before_attention=before)
    ids = torch.randint(5, 120, (2, L))
    types = TYPES.expand(2, -1).clone()
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0  # the second example has 11 real tokens: its closing [SEP] is position 10
    fractions = (1.0, 0.7, 0.4)
    with torch.no_grad():
        together = model(ids, mask, types, length_config=fractions)
        for row, length in ((0, L), (1, 11)):
            alone = model(ids[row:row + 1, :length], mask[row:row + 1, :length], types[row:row + 1, :length],
                          length_config=fractions)
            torch.testing.assert_close(together.start_logits[row, :length], alone.start_logits[0],
                                       atol=1e-5, rtol=1e-5)


def test_keep_thresholds_keep_what_the_scorer_puts_above_them():
    """Layer 0 of a one-layer model keeps the protected tokens and the context tokens whose linear
    score on the embeddings is above the threshold's logit (worked out by hand), and its logits
    are those of keeping that many by count; threshold 0 keeps everything."""
    model = learned_model()
    ids = torch.randint(5, 120, (1, L))
    with torch.no_grad():
        embeddings = model.bert.embeddings(input_ids=ids, token_type_ids=TYPES)[0]
        scorer = model.bert.encoder.token_scorers[0].net
        probabilities = torch.sigmoid(embeddings @ scorer.weight[0] + scorer.bias[0])
        threshold = float(probabilities[6:L - 1].median())  # about half of the 9 context tokens above it
        count = 7 + int((probabilities[6:L - 1] > threshold).sum())  # 6 before the context, the last [SEP]
        by_threshold = model(ids, torch.ones_like(ids), TYPES, keep_thresholds=[threshold])
        by_count = model(ids, torch.ones_like(ids), TYPES, length_config=[count])
        full = model(ids, torch.ones_like(ids), TYPES)
        everything = model(ids, torch.ones_like(ids), TYPES, keep_thresholds=[0.0])
    assert 7 < count < L
    assert by_threshold.kept_counts.tolist() == [[count]]
    torch.testing.assert_close(by_threshold.start_logits, by_count.start_logits, atol=0, rtol=0)
    assert not torch.equal(by_threshold.start_logits, full.start_logits)
    torch.testing.assert_close(everything.start_logits, full.start_logits, atol=0, rtol=0)
    assert everything.kept_counts.tolist() == [[L]]


@pytest.mark.parametrize("before", [False, True])
def test_keep_thresholds_do_not_depend_on_the_batch(before):
    """Each example keeps its own tokens above the thresholds: its logits and counts in a padded
    batch are those it gets alone."""
    model = learned_model(num_hidden_layers=3, select_before_attention=before)
    with torch.no_grad():
        for p in model.bert.encoder.token_scorers.parameters():
            p.normal_(0, 0.5)
    ids = torch.randint(5, 120, (2, L))
    types = TYPES.expand(2, -1).clone()
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    thresholds = (0.0, 0.4, 0.6)
    with torch.no_grad():
        together = model(ids, mask, types, keep_thresholds=thresholds)
        counts = together.kept_counts.tolist()
        for row, length in ((0, L), (1, 11)):
            alone = model(ids[row:row + 1, :length], mask[row:row + 1, :length], types[row:row + 1, :length],
                          keep_thresholds=thresholds)
            torch.testing.assert_close(together.start_logits[row, :length], alone.start_logits[0],
                                       atol=1e-5, rtol=1e-5)
            assert alone.kept_counts.tolist() == [counts[row]]
    assert counts[1][0] == 11 and counts[0][0] == L and counts[0][2] < counts[0][1] < L  # layers 1-2 dropped


def test_keep_thresholds_refused_where_they_cannot_apply():
    model = learned_model(num_hidden_layers=2)
    ids = torch.randint(5, 120, (1, L))
    with pytest.raises(ValueError, match=r"keep_thresholds: expected 2 probabilities in \[0, 1\)"):
        model(ids, keep_thresholds=[0.0, 1.0])
    with pytest.raises(ValueError, match="not both"):
        model(ids, keep_thresholds=[0.0, 0.5], length_config=[1.0, 0.5])
    torch.manual_seed(0)
    paper = BertForQuestionAnswering(tiny_bert_config(num_hidden_layers=2)).eval()
    with pytest.raises(ValueError, match="needs the learned drop criterion; this model's is 'attention'"):
        paper(ids, keep_thresholds=[0.0, 0.5])
