"""Cut a student from a BERT checkpoint by keeping some of its layers.

TinyBERT's uniform layer mapping pairs a 3-layer student with layers 2, 4 and 6 of a 6-layer
teacher; a student initialised from exactly those pretrained layers plays General TinyBERT's
role when no General TinyBERT checkpoint is at hand:

    python -m tools.make_student --model_name_or_path MINILM_DIR --layers 2,4,6 --output_dir student-3l

Layers are numbered from 1, as in the papers. The embeddings (and a pooler or QA head, if the
checkpoint has one) are kept as they are; the output is an ordinary Hugging Face folder (config,
model.safetensors, tokenizer) that ``run_squad.py`` and transformers load.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core import files
from core.errors import UsageError, cli_main


def parse_layers(text: str, num_layers: int) -> list[int]:
    """'2,4,6' -> [2, 4, 6]; 1-based, strictly increasing, each in [1, num_layers]."""
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--layers {text!r}: expected comma-separated layer numbers, e.g. 2,4,6") from None
    if not layers:
        raise UsageError("--layers: give at least one layer")
    if any(not 1 <= layer <= num_layers for layer in layers):
        raise UsageError(f"--layers {text}: layer numbers run from 1 to {num_layers}")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise UsageError(f"--layers {text}: layers must be strictly increasing")
    return layers


def cut_layers(model, layers: list[int]):
    """Keep ``layers`` (1-based) of ``model``'s encoder in place; returns the model."""
    import torch

    base = getattr(model, model.base_model_prefix, model)
    base.encoder.layer = torch.nn.ModuleList(base.encoder.layer[i - 1] for i in layers)
    model.config.num_hidden_layers = len(layers)
    return model


def make_student(model_dir: str, layers_text: str, output_dir: str) -> Path:
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    source, out = Path(model_dir), Path(output_dir)
    if not (source / "config.json").is_file():
        raise UsageError(f"--model_name_or_path {source}: no config.json there (a local model folder is needed)")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--output_dir {out} exists and is not empty")
    config = AutoConfig.from_pretrained(str(source))
    layers = parse_layers(layers_text, config.num_hidden_layers)
    # The checkpoint's own class (BertModel, BertForQuestionAnswering, ...) keeps every weight.
    architecture = (config.architectures or ["BertModel"])[0]
    import transformers
    model_class = getattr(transformers, architecture, AutoModel)
    model = model_class.from_pretrained(str(source), dtype=torch.float32)
    cut_layers(model, layers)
    tmp = out.with_name(f".{out.name}.tmp")
    model.save_pretrained(str(tmp))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(tmp))
    files.follow_umask(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="local folder of the source BERT")
    parser.add_argument("--layers", required=True, help="1-based layers to keep, e.g. 2,4,6")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)

    def run():
        out = make_student(args.model_name_or_path, args.layers, args.output_dir)
        print(f"wrote a {len(args.layers.split(','))}-layer student to {out}")

    return cli_main("make_student", run)


if __name__ == "__main__":
    sys.exit(main())
