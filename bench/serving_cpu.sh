#!/usr/bin/env bash
# The serving measurements of README "Serving against what a user runs", on a CPU: a length-adaptive
# all-MiniLM-L6-v2 trained here (step 1, then step 4 with relative LengthDrop), both search spaces
# on training questions the model never saw, and the serving table on the dev set.
#
#   SQUAD_DIR=../shared/squad MINILM=<all-MiniLM-L6-v2 folder> OUT=/tmp/serving bash bench/serving_cpu.sh
#
# About 2 hours on 2 CPU cores; each stage is skipped when its output exists. Timings need an idle
# machine: anything else running (tests, a second job) distorts them by up to 3x.
set -euo pipefail
cd "$(dirname "$0")/.."
SQUAD_DIR=${SQUAD_DIR:?set SQUAD_DIR to the folder with train-v1.1-subset.json and dev-v1.1.json}
MINILM=${MINILM:?set MINILM to the all-MiniLM-L6-v2 folder}
OUT=${OUT:-/tmp/serving}
mkdir -p "$OUT"
COMMON=(--model_type bert --do_lower_case --data_dir "$SQUAD_DIR" --train_file train-v1.1-subset.json
        --predict_file dev-v1.1.json --max_seq_length 256 --doc_stride 128 --do_train --save_steps 0
        --cache_dir "$OUT/cache" --threads 2 --logging_steps 10 --num_train_epochs 1 --warmup_ratio 0.1)

# Step 1: fine-tune on the first 8,000 training questions (windows of 256 tokens to fit the CPU).
[[ -e $OUT/step1/checkpoint-last/model.safetensors ]] || python run_squad.py "${COMMON[@]}" \
  --model_name_or_path "$MINILM" --learning_rate 1e-4 --per_gpu_train_batch_size 32 \
  --max_train_questions 8000 --output_dir "$OUT/step1"

# Step 4, relative LengthDrop (LAT's setting: the full model learns the gold spans, the sub-models
# distil from it in place), on the first 700 questions: 57 steps, what the CPU budget allowed.
[[ -e $OUT/step4/checkpoint-last/model.safetensors ]] || python run_squad.py "${COMMON[@]}" \
  --model_name_or_path "$OUT/step1/checkpoint-last" --learning_rate 5e-5 --per_gpu_train_batch_size 16 \
  --max_train_questions 700 --length_adaptive --length_space relative --num_sandwich 1 \
  --length_drop_ratio_bound 0.2 --sandwich_full_weight 0.5 --output_dir "$OUT/step4"

# Search both spaces on 300 training questions past the first 8,000 (never trained on).
[[ -e $OUT/heldout-train.json ]] || python - "$SQUAD_DIR/train-v1.1-subset.json" "$OUT/heldout-train.json" <<'PY'
import json, sys
data, seen, out = json.load(open(sys.argv[1]))["data"], 0, []
for article in data:
    paragraphs = []
    for p in article["paragraphs"]:
        qas = [qa for i, qa in enumerate(p["qas"], seen) if i >= 8000]
        seen += len(p["qas"])
        if qas:
            paragraphs.append({"context": p["context"], "qas": qas})
    if paragraphs:
        out.append({"title": article["title"], "paragraphs": paragraphs})
json.dump({"version": "1.1", "data": out}, open(sys.argv[2], "w"))
PY
[[ -e $OUT/spaces/bench_spaces.json ]] || python -m bench.bench_spaces --model "$OUT/step4/checkpoint-last" \
  --dev_file "$OUT/heldout-train.json" --max_questions 300 --budget 12 --threads 2 --batch_size 32 \
  --output_dir "$OUT/spaces" --repeats 3

# The serving table on the first 300 dev questions, at the configurations chosen from the searches.
python -m bench.bench_serving --model "$OUT/step4/checkpoint-last" --dev_file "$SQUAD_DIR/dev-v1.1.json" \
  --max_questions 300 --config full --config 'rel:[0.99, 0.98, 0.97, 0.95, 0.81, 0.6]' \
  --config 'abs:[376, 345, 299, 267, 108, 97]' --backends torch,onnxruntime,int8 --threads 1,2 \
  --batch_sizes 1,32 --time_features 128 --time_features_batch1 32 --repeats 3 \
  --workdir "$OUT/serving_work" --output "$OUT/serving.json"
