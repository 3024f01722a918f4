"""The shared test tokenizer must really tokenise the shipped data (an all-[UNK] tokenizer would
make every pipeline test vacuous)."""
from helpers import make_tiny_tokenizer, tiny_squad_texts


def test_tiny_tokenizer_knows_every_word(tmp_path):
    from transformers import AutoTokenizer

    texts = tiny_squad_texts()
    make_tiny_tokenizer(tmp_path, texts)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))  # as the project loads it
    ids = tok(" ".join(texts))["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.tokenize("Margarethe Lindqvist, 38 metres.") == ["margarethe", "lindqvist", ",", "38", "metres", "."]
