"""make_student.py: a student cut from some layers of a BERT runs exactly those layers."""
import pytest
import torch
from transformers import BertModel

from tools import make_student
from helpers import make_tiny_tokenizer, require_minilm, tiny_bert_config, tiny_squad_texts
from modeling_bert import BertForQuestionAnswering


def check_cut_equals_layers(source, student, layers):
    """The student's last hidden state (transformers' BertModel on the saved folder) equals the
    source model run on ``layers`` only (our LayerDrop path, an independent implementation)."""
    torch.manual_seed(0)
    ids = torch.randint(5, 100, (2, 21))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    types = torch.zeros_like(ids)
    cut = BertModel.from_pretrained(str(student), dtype=torch.float32).eval()
    full = BertForQuestionAnswering.from_pretrained(str(source), dtype=torch.float32).eval()
    assert cut.config.num_hidden_layers == len(layers)
    with torch.no_grad():
        got = cut(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        want = full(ids, mask, types, layer_config=[i - 1 for i in layers],
                    output_hidden_states=True).hidden_states[-1]
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-4)


def test_cut_tiny_model_runs_the_kept_layers(tmp_path):
    tok = make_tiny_tokenizer(tmp_path / "src", tiny_squad_texts())
    config = tiny_bert_config(len(tok), num_hidden_layers=6, max_position_embeddings=64)
    config.architectures = ["BertModel"]
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(tmp_path / "src"))
    assert make_student.main(["--model_name_or_path", str(tmp_path / "src"), "--layers", "2,4,6",
                              "--output_dir", str(tmp_path / "student")]) == 0
    assert (tmp_path / "student" / "tokenizer.json").is_file()
    check_cut_equals_layers(tmp_path / "src", tmp_path / "student", [2, 4, 6])


def test_cut_real_minilm_layers_2_4_6(tmp_path):
    minilm = require_minilm()
    assert make_student.main(["--model_name_or_path", str(minilm), "--layers", "2,4,6",
                              "--output_dir", str(tmp_path / "student")]) == 0
    check_cut_equals_layers(minilm, tmp_path / "student", [2, 4, 6])


@pytest.mark.parametrize("layers, message", [
    ("2,x", "comma-separated"), ("0,2", "from 1 to 6"), ("2,7", "from 1 to 6"), ("4,2", "increasing"), ("", "at least one"),
])
def test_bad_layer_lists_are_one_line_errors(layers, message):
    with pytest.raises(ValueError, match=message):
        make_student.parse_layers(layers, 6)


def test_non_empty_output_folder_is_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text("{}")
    assert make_student.main(["--model_name_or_path", str(tmp_path / "src"), "--layers", "1",
                              "--output_dir", str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err
