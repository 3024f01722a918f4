"""modeling_bert.BertForQuestionAnswering: equivalence with transformers at full length, Drop-and-
Restore against a slow per-example reference written here, checkpoint interop, autocast."""
from __future__ import annotations

import json
import math

import pytest
import torch
import transformers
from helpers import make_tiny_tokenizer, require_minilm, save_tiny_bert, tiny_bert_config

from modeling_bert import BertForQuestionAnswering

TOL = 1e-5


def _hf_model(config_or_path, attn="eager"):
    """transformers' own BertForQuestionAnswering (eager returns attention probabilities)."""
    if isinstance(config_or_path, transformers.BertConfig):
        config = transformers.BertConfig.from_dict(config_or_path.to_dict())
        config._attn_implementation = attn
        return transformers.BertForQuestionAnswering(config).eval()
    # float32 whatever the folder stores (transformers 5 would keep a half-precision checkpoint's dtype)
    return transformers.BertForQuestionAnswering.from_pretrained(
        str(config_or_path), attn_implementation=attn, dtype=torch.float32).eval()


def _batch(vocab_size, lengths, seq_len, seed=0):
    """Random ids with right padding to ``seq_len``; segment 1 after the first third."""
    gen = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    input_ids = torch.randint(5, vocab_size, (batch, seq_len), generator=gen)
    attention_mask = torch.zeros(batch, seq_len, dtype=torch.long)
    token_type_ids = torch.zeros(batch, seq_len, dtype=torch.long)
    for row, length in enumerate(lengths):
        attention_mask[row, :length] = 1
        token_type_ids[row, length // 3:length] = 1
        input_ids[row, length:] = 0
    input_ids[:, 0] = 2  # [CLS]
    return input_ids, attention_mask, token_type_ids


def _max_diff(a, b):
    return (a - b).abs().max().item()


def _assert_matches_transformers(ours, theirs, inputs):
    ids, mask, types = inputs
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types,
                          output_hidden_states=True, output_attentions=True)
        plain = ours(ids, mask, types)
        full = ours(ids, mask, types, output_hidden_states=True, output_attentions=True)
    for got in (plain, full):
        assert _max_diff(got.start_logits, expected.start_logits) <= TOL
        assert _max_diff(got.end_logits, expected.end_logits) <= TOL
    assert len(full.hidden_states) == len(expected.hidden_states) == ours.config.num_hidden_layers + 1
    for got, want in zip(full.hidden_states, expected.hidden_states):
        assert _max_diff(got, want) <= TOL * max(1.0, want.abs().max().item())
    assert len(full.attentions) == len(expected.attentions)
    for got, want in zip(full.attentions, expected.attentions):
        assert got.shape == want.shape and _max_diff(got, want) <= TOL


def test_minilm_full_length_matches_transformers():
    folder = require_minilm()
    torch.manual_seed(0)
    ours, info = BertForQuestionAnswering.from_pretrained(str(folder), output_loading_info=True,
                                                          dtype=torch.float32)
    assert set(info["missing_keys"]) == {"qa_outputs.weight", "qa_outputs.bias"}
    theirs = _hf_model(folder)
    theirs.qa_outputs.load_state_dict(ours.qa_outputs.state_dict())
    ours.eval()
    inputs = _batch(ours.config.vocab_size, [64, 40, 17], 64)
    _assert_matches_transformers(ours, theirs, inputs)
    # The fast (SDPA) transformers model agrees too, and so does an all-max length config.
    sdpa = _hf_model(folder, attn="sdpa")
    sdpa.qa_outputs.load_state_dict(ours.qa_outputs.state_dict())
    with torch.no_grad():
        want = sdpa(input_ids=inputs[0], attention_mask=inputs[1], token_type_ids=inputs[2])
        got = ours(*inputs, length_config=[64] * 6)
    assert _max_diff(got.start_logits, want.start_logits) <= TOL
    assert _max_diff(got.end_logits, want.end_logits) <= TOL


@pytest.mark.parametrize("hidden_act", ["gelu", "relu", "gelu_new", "silu"])
def test_random_config_full_length_matches_transformers(hidden_act):
    config = tiny_bert_config(hidden_size=36, num_attention_heads=3, intermediate_size=53,
                              num_hidden_layers=3, hidden_act=hidden_act, layer_norm_eps=1e-7)
    torch.manual_seed(1)
    theirs = _hf_model(config)
    ours = BertForQuestionAnswering(config).eval()
    ours.load_state_dict(theirs.state_dict())
    _assert_matches_transformers(ours, theirs, _batch(config.vocab_size, [29, 11], 29, seed=3))


def test_loss_matches_transformers():
    config = tiny_bert_config()
    theirs = _hf_model(config)
    ours = BertForQuestionAnswering(config).eval()
    ours.load_state_dict(theirs.state_dict())
    ids, mask, types = _batch(config.vocab_size, [20, 12, 9], 20)
    starts, ends = torch.tensor([3, 50, 0]), torch.tensor([5, 7, 99])  # out-of-range ones ignored
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types,
                      start_positions=starts, end_positions=ends).loss
        got = ours(ids, mask, types, start_positions=starts, end_positions=ends).loss
    assert abs(got.item() - want.item()) <= TOL


# ---------------------------------------------------------------------------------------------
# Drop-and-Restore against an explicit per-example loop


def _linear(x, module):
    return x @ module.weight.T + module.bias


def _layer_norm(x, module):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], module.weight, module.bias, module.eps)


def _slow_forward(model, input_ids, attention_mask, token_type_ids, length_config, layer_config,
                  keep_cls=False, count_padding_queries=False):
    """Drop-and-Restore written out token by token: returns start/end logits [B, L], the restored
    hidden states after every layer, and per executed layer the attention probabilities over
    the kept tokens (in input order)."""
    config, bert = model.config, model.bert
    emb = bert.embeddings
    heads, head_size = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    act = transformers.activations.ACT2FN[config.hidden_act]
    batch, seq_len = input_ids.shape
    starts, ends, hidden_per_layer, attentions = [], [], [[] for _ in range(config.num_hidden_layers + 1)], []
    for b in range(batch):
        x = emb.word_embeddings.weight[input_ids[b]] + emb.position_embeddings.weight[:seq_len] \
            + emb.token_type_embeddings.weight[token_type_ids[b]]
        state = _layer_norm(x, emb.LayerNorm)          # [L, H], the restored buffer
        hidden_per_layer[0].append(state.clone())
        alive = list(range(seq_len))                   # input positions still processed
        example_attentions = []
        for index, layer in enumerate(bert.encoder.layer):
            if index not in layer_config:
                hidden_per_layer[index + 1].append(state.clone())
                continue
            h = state[alive]
            real = [bool(attention_mask[b, p]) for p in alive]
            n = len(alive)
            att = layer.attention.self
            q = _linear(h, att.query).view(n, heads, head_size)
            k = _linear(h, att.key).view(n, heads, head_size)
            v = _linear(h, att.value).view(n, heads, head_size)
            probs = torch.zeros(heads, n, n, dtype=h.dtype)
            for head in range(heads):
                for i in range(n):
                    row = torch.stack([q[i, head] @ k[j, head] / math.sqrt(head_size)
                                       + (0.0 if real[j] else -10000.0) for j in range(n)])
                    probs[head, i] = torch.softmax(row, dim=0)
            example_attentions.append(probs)
            context = torch.stack([torch.cat([probs[head, i] @ v[:, head] for head in range(heads)])
                                   for i in range(n)])
            attended = _layer_norm(_linear(context, layer.attention.output.dense) + h, layer.attention.output.LayerNorm)
            keep = min(n, length_config[index]) if length_config is not None else n
            significance = [sum(probs[head, i, j].item() for head in range(heads) for i in range(n)
                                if real[i] or count_padding_queries) for j in range(n)]
            if keep_cls:
                significance[0] = math.inf
            ranked = sorted(range(n), key=lambda j: (-significance[j], j))
            kept = sorted(ranked[:keep])
            ffn_in = attended[kept]
            out = _layer_norm(_linear(act(_linear(ffn_in, layer.intermediate.dense)), layer.output.dense) + ffn_in,
                              layer.output.LayerNorm)
            state = state.clone()
            for row, j in enumerate(kept):
                state[alive[j]] = out[row]
            alive = [alive[j] for j in kept]
            hidden_per_layer[index + 1].append(state.clone())
        logits = _linear(state, model.qa_outputs)
        starts.append(logits[:, 0])
        ends.append(logits[:, 1])
        attentions.append(example_attentions)
    hidden = [torch.stack(layer) for layer in hidden_per_layer]
    return torch.stack(starts), torch.stack(ends), hidden, attentions


def _tiny_model(seed=0, **overrides):
    config = tiny_bert_config(num_hidden_layers=4, hidden_size=16, num_attention_heads=2,
                              intermediate_size=24, **overrides)
    torch.manual_seed(seed)
    model = BertForQuestionAnswering(config).eval().double()
    # Larger attention weights give peaked, well-separated significance scores.
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.attention.self.query.weight.mul_(4)
            layer.attention.self.key.weight.mul_(4)
    return model


@pytest.mark.parametrize(
    "case",
    [
        dict(lengths=[14, 14], length_config=(12, 9, 6, 4), layers=(0, 1, 2, 3)),
        # padding is dropped first: 10 kept of which 9 real, then real tokens go
        dict(lengths=[14, 9], length_config=(10, 10, 7, 3), layers=(0, 1, 2, 3)),
        dict(lengths=[14, 6], length_config=(13, 8, 5, 2), layers=(0, 1, 2, 3), keep_cls=True),
        dict(lengths=[14, 11], length_config=(12, 12, 6, 6), layers=(1, 3)),
        dict(lengths=[14, 7], length_config=(11, 8, 5, 3), layers=(0, 2, 3), count_padding_queries=True),
    ],
)
def test_drop_and_restore_matches_slow_reference(case):
    model = _tiny_model(**({"count_padding_queries": True} if case.get("count_padding_queries") else {}))
    ids, mask, types = _batch(model.config.vocab_size, case["lengths"], 14, seed=5)
    keep_cls = case.get("keep_cls", False)
    with torch.no_grad():
        want_start, want_end, want_hidden, want_att = _slow_forward(
            model, ids, mask, types, case["length_config"], case["layers"], keep_cls,
            case.get("count_padding_queries", False))
        fast = model(ids, mask, types, length_config=case["length_config"], layer_config=case["layers"],
                     always_keep_cls_token=keep_cls)
        full = model(ids, mask, types, length_config=case["length_config"], layer_config=case["layers"],
                     always_keep_cls_token=keep_cls, output_hidden_states=True, output_attentions=True,
                     output_attention_scores=True)
    for got in (fast, full):
        assert _max_diff(got.start_logits, want_start) <= 1e-9
        assert _max_diff(got.end_logits, want_end) <= 1e-9
    assert len(full.hidden_states) == model.config.num_hidden_layers + 1
    for got, want in zip(full.hidden_states, want_hidden):
        assert _max_diff(got, want) <= 1e-9
    assert len(full.attentions) == len(full.attention_scores) == len(case["layers"])
    for layer, (probs, scores) in enumerate(zip(full.attentions, full.attention_scores)):
        for b in range(ids.size(0)):
            assert _max_diff(probs[b], want_att[b][layer]) <= 1e-9
            assert _max_diff(torch.softmax(scores[b], dim=-1), want_att[b][layer]) <= 1e-9


def test_dropping_changes_the_output_and_keeps_padding_last():
    """Guards against a no-op implementation: a short config changes real-token logits, while
    a config that only drops padding leaves them untouched."""
    model = _tiny_model(seed=2)
    ids, mask, types = _batch(model.config.vocab_size, [14, 8], 14, seed=7)
    with torch.no_grad():
        base = model(ids, mask, types)
        pad_only = model(ids, mask, types, length_config=(14, 8, 8, 8))
        short = model(ids, mask, types, length_config=(6, 4, 3, 2))
    assert _max_diff(pad_only.start_logits[1, :8], base.start_logits[1, :8]) <= 1e-9
    assert _max_diff(short.start_logits[0], base.start_logits[0]) > 1e-6  # float64 noise is ~1e-15


def test_padding_to_longest_gives_the_same_real_token_logits():
    """Real-query significance makes the result independent of how far a batch is padded."""
    model = _tiny_model(seed=3)
    ids, mask, types = _batch(model.config.vocab_size, [9, 7], 14, seed=11)
    config = (12, 8, 6, 4)
    with torch.no_grad():
        padded = model(ids, mask, types, length_config=config)
        trimmed = model(ids[:, :9], mask[:, :9], types[:, :9], length_config=config)
    assert _max_diff(padded.start_logits[0, :9], trimmed.start_logits[0]) <= 1e-9
    assert _max_diff(padded.end_logits[1, :7], trimmed.end_logits[1, :7]) <= 1e-9


def test_training_path_equals_inference_path_and_has_gradients():
    """The autograd (batched) and inference (per-example, in-place) attention paths agree."""
    model = _tiny_model(seed=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids, mask, types = _batch(model.config.vocab_size, [14, 10, 5], 14, seed=13)
    config = (11, 8, 6, 4)
    with torch.no_grad():
        inference = model(ids, mask, types, length_config=config)
    model.train()
    trained = model(ids, mask, types, length_config=config, start_positions=torch.tensor([1, 2, 3]),
                    end_positions=torch.tensor([2, 4, 3]))
    trained.loss.backward()
    assert _max_diff(trained.start_logits.detach(), inference.start_logits) <= 1e-9
    assert model.bert.encoder.layer[3].output.dense.weight.grad.abs().sum() > 0


def test_default_length_and_layer_config():
    model = _tiny_model(seed=6)
    ids, mask, types = _batch(model.config.vocab_size, [14, 12], 14, seed=17)
    with torch.no_grad():
        explicit = model(ids, mask, types, length_config=(10, 7, 5, 3), layer_config=(0, 1, 3))
        model.set_length_config((10, 7, 5, 3))
        model.set_layer_config((0, 1, 3))
        default = model(ids, mask, types)
        model.set_length_config(None)
        model.set_layer_config(None)
        reset = model(ids, mask, types)
        base = model(ids, mask, types, length_config=(14, 14, 14, 14))
    assert _max_diff(default.start_logits, explicit.start_logits) == 0
    assert _max_diff(reset.start_logits, base.start_logits) <= 1e-9
    with pytest.raises(ValueError, match="length_config"):
        model(ids, mask, types, length_config=(10, 7))
    with pytest.raises(ValueError, match="layer_config"):
        model.set_layer_config((0, 9))


def test_autocast_bf16_stays_close_to_fp32():
    config = tiny_bert_config(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, intermediate_size=96)
    torch.manual_seed(8)
    model = BertForQuestionAnswering(config).eval()
    ids, mask, types = _batch(config.vocab_size, [40, 25], 40, seed=19)
    for length_config in (None, (40, 40, 40), (30, 20, 12)):
        with torch.no_grad():
            want = model(ids, mask, types, length_config=length_config)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = model(ids, mask, types, length_config=length_config)
        scale = want.start_logits.abs().max().item()
        assert torch.isfinite(got.start_logits).all()
        assert (got.start_logits.float() - want.start_logits).abs().mean().item() <= 0.05 * scale


# ---------------------------------------------------------------------------------------------
# Checkpoints


def test_our_checkpoint_loads_in_transformers(tmp_path):
    config = tiny_bert_config()
    torch.manual_seed(9)
    ours = BertForQuestionAnswering(config).eval()
    ours.save_pretrained(str(tmp_path))
    theirs, info = transformers.AutoModelForQuestionAnswering.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    inputs = _batch(config.vocab_size, [30, 12], 30)
    with torch.no_grad():
        want = theirs.eval()(input_ids=inputs[0], attention_mask=inputs[1], token_type_ids=inputs[2])
        got = ours(*inputs)
    assert _max_diff(got.start_logits, want.start_logits) <= TOL
    assert _max_diff(got.end_logits, want.end_logits) <= TOL


def test_transformers_checkpoint_loads_in_ours(tmp_path):
    config = tiny_bert_config(hidden_act="gelu_new")
    save_tiny_bert(tmp_path, config, seed=10)
    theirs = transformers.BertForQuestionAnswering.from_pretrained(str(tmp_path)).eval()
    ours, info = BertForQuestionAnswering.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    inputs = _batch(config.vocab_size, [30, 21], 30)
    with torch.no_grad():
        want = theirs(input_ids=inputs[0], attention_mask=inputs[1], token_type_ids=inputs[2])
        got = ours.eval()(*inputs)
    assert _max_diff(got.start_logits, want.start_logits) <= TOL


def _best_span(start_logits, end_logits, candidates, max_len=15):
    best = max(((s, e) for s in candidates for e in candidates if s <= e < s + max_len),
               key=lambda se: start_logits[se[0]] + end_logits[se[1]])
    return best


def test_saved_model_answers_like_transformers_qa(tmp_path):
    """What the question-answering pipeline does (transformers 5 removed that pipeline; it is
    used when available): our saved folder, loaded by Auto classes, answers a question, and our
    model picks the same span."""
    context = "The tiny cat sat on the red mat in Paris in 1999 while the dog slept."
    question = "Where did the cat sit?"
    tokenizer = make_tiny_tokenizer(tmp_path / "tok", [context, question])
    config = tiny_bert_config(vocab_size=len(tokenizer))
    torch.manual_seed(12)
    ours = BertForQuestionAnswering(config).eval()
    ours.save_pretrained(str(tmp_path / "model"))
    tokenizer.save_pretrained(str(tmp_path / "model"))

    auto_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "model"))
    auto_model = transformers.AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "model")).eval()
    encoded = auto_tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt")
    offsets = encoded.pop("offset_mapping")[0]
    context_tokens = [i for i, s in enumerate(encoded.sequence_ids(0)) if s == 1]
    with torch.no_grad():
        want = auto_model(**encoded)
        got = ours(encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"])
    span = _best_span(want.start_logits[0], want.end_logits[0], context_tokens)
    assert span == _best_span(got.start_logits[0], got.end_logits[0], context_tokens)
    answer = context[offsets[span[0]][0]:offsets[span[1]][1]]
    assert answer and answer in context
    if "question-answering" in transformers.pipelines.get_supported_tasks():
        qa = transformers.pipeline("question-answering", model=str(tmp_path / "model"))
        assert qa(question=question, context=context)["answer"] == answer


def test_legacy_tinybert_checkpoint_loads(tmp_path):
    """A General-TinyBERT style folder: pytorch_model.bin with LayerNorm.gamma/beta names,
    fit_dense and cls.* pre-training heads, and TinyBERT's extra config keys."""
    config = tiny_bert_config(num_hidden_layers=2)
    torch.manual_seed(13)
    source = transformers.BertForQuestionAnswering(config)
    state = {}
    for name, tensor in source.state_dict().items():
        if name.startswith("qa_outputs"):
            continue
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state[name] = tensor.clone()
    state["fit_dense.weight"] = torch.randn(48, config.hidden_size)
    state["fit_dense.bias"] = torch.randn(48)
    state["cls.predictions.bias"] = torch.randn(config.vocab_size)
    state["cls.predictions.transform.dense.weight"] = torch.randn(config.hidden_size, config.hidden_size)
    state["cls.predictions.transform.LayerNorm.gamma"] = torch.randn(config.hidden_size)
    state["cls.seq_relationship.weight"] = torch.randn(2, config.hidden_size)
    torch.save(state, tmp_path / "pytorch_model.bin")
    raw = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "architectures", "transformers_version")}
    raw.update({"pre_trained": "", "training": "", "structure": [], "cell": {}, "emb_size": config.hidden_size})
    (tmp_path / "config.json").write_text(json.dumps(raw))

    loaded_config = transformers.BertConfig.from_pretrained(str(tmp_path))
    loaded_config.fit_size = 48
    model, info = BertForQuestionAnswering.from_pretrained(str(tmp_path), config=loaded_config,
                                                           output_loading_info=True)
    assert set(info["missing_keys"]) == {"qa_outputs.weight", "qa_outputs.bias"}
    loaded = model.state_dict()
    for name, tensor in source.state_dict().items():
        if not name.startswith("qa_outputs"):
            assert torch.equal(loaded[name], tensor), name
    assert torch.equal(model.fit_dense.weight, state["fit_dense.weight"])
    assert torch.equal(model.bert.embeddings.LayerNorm.weight, state["bert.embeddings.LayerNorm.gamma"])

    without_fit, info = BertForQuestionAnswering.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not hasattr(without_fit, "fit_dense")
    assert set(info["missing_keys"]) == {"qa_outputs.weight", "qa_outputs.bias"}


def test_fit_dense_follows_config():
    config = tiny_bert_config()
    assert not hasattr(BertForQuestionAnswering(config), "fit_dense")
    config.fit_size = 50
    model = BertForQuestionAnswering(config)
    assert model.fit_dense.in_features == config.hidden_size and model.fit_dense.out_features == 50


def test_a_fixed_length_configuration_traces_to_one_graph_for_any_padding():
    """With a fixed length configuration the forward has no branch on tensor values: a graph
    traced on an unpadded batch (where eager skips the mask) gives eager's logits on padded
    batches of the same shape."""
    import warnings

    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_bert_config(50, num_hidden_layers=3)).eval()
    model.set_length_config((12, 9, 6))

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            out = self.model(input_ids, attention_mask, return_dict=False)
            return out[0], out[1]

    ids = torch.randint(5, 50, (2, 16))
    padded = torch.ones(2, 16, dtype=torch.long)
    padded[1, 11:] = 0
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(Logits(), (ids, torch.ones(2, 16, dtype=torch.long)))
        for mask in (padded, padded.flip(0)):
            other = torch.randint(5, 50, (2, 16))
            want = model(other, mask)
            got_start, got_end = traced(other, mask)
            torch.testing.assert_close(got_start, want.start_logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got_end, want.end_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("count_padding_queries", [False, True])
def test_flash_significance_equals_explicit_softmax_sums(count_padding_queries):
    """The two-pass flash computation of significance equals the column sums of explicit softmax
    probabilities (over heads and real queries; padded keys 0), and its context equals P @ V."""
    import math

    import modeling_bert

    if modeling_bert._FLASH_CPU is None:
        pytest.skip("this torch has no CPU flash attention op")
    torch.manual_seed(0)
    batch, heads, n, d = 3, 4, 37, 8
    q, k, v = (torch.randn(batch, heads, n, d) for _ in range(3))
    real = torch.ones(batch, n, dtype=torch.bool)
    real[1, 20:] = False
    real[2, 9:] = False
    scores = q @ k.transpose(-1, -2) / math.sqrt(d) + torch.where(real, 0.0, -10000.0)[:, None, None, :]
    probs = torch.softmax(scores, dim=-1)
    counted = torch.ones_like(real) if count_padding_queries else real
    want_sig = (probs * counted[:, None, :, None]).sum(dim=(1, 2)) * real
    with torch.no_grad():
        context, sig = modeling_bert.flash_attention_with_significance(q, k, v, real, count_padding_queries)
    torch.testing.assert_close(sig, want_sig, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(context, (probs @ v).transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_relative_configuration_keeps_fractions_of_each_examples_own_length():
    """A keep-fraction configuration keeps, in each example, ceil(fraction * its own real length)
    tokens per layer (hand-computed), whatever the batch's padding and whichever examples share
    the batch: each example's logits are those of the example run alone, unpadded, at its counts."""
    model = _tiny_model(seed=4)
    ids, mask, types = _batch(model.config.vocab_size, [9, 7], 14, seed=12)
    fractions = (1.0, 0.75, 0.5, 0.3)
    own_counts = {9: (9, 7, 5, 3), 7: (7, 6, 4, 3)}  # ceil(f * 9) and ceil(f * 7)
    with torch.no_grad():
        relative = model(ids, mask, types, length_config=fractions)
        trimmed = model(ids[:, :9], mask[:, :9], types[:, :9], length_config=fractions)
        full = model(ids, mask, types)
        for row, length in enumerate((9, 7)):
            alone = model(ids[row:row + 1, :length], mask[row:row + 1, :length], types[row:row + 1, :length],
                          length_config=own_counts[length])
            assert _max_diff(relative.start_logits[row, :length], alone.start_logits[0]) <= 1e-9, row
            assert _max_diff(relative.end_logits[row, :length], alone.end_logits[0]) <= 1e-9, row
    real = mask[:, :9].bool()  # padded positions' logits are never read
    assert _max_diff(relative.end_logits[:, :9][real], trimmed.end_logits[real]) <= 1e-9
    assert _max_diff(relative.start_logits[1, :7], full.start_logits[1, :7]) > 1e-6  # it does drop real tokens
    with torch.no_grad():  # all ones is the full model on real tokens
        ones = model(ids, mask, types, length_config=(1.0,) * 4)
    assert _max_diff(ones.start_logits[:, :9][mask[:, :9].bool()], full.start_logits[:, :9][mask[:, :9].bool()]) <= 1e-9
