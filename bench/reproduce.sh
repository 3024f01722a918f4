#!/usr/bin/env bash
# The paper's table in miniature (docs/reproduction.md): all-MiniLM-L6-v2 as the teacher's
# role, a 3-layer student cut from it as General TinyBERT's, steps 1-5 with the paper's
# commands, the step-4 ablations and the re-scoring. Each job writes $OUT/done/NAME when it
# succeeds and is skipped when that file exists, so the script can be run again after an
# interruption; independent jobs of a stage run at once (the models are small: one GPU holds
# several runs, each bound by its own Python loop).
#
#   SQUAD_DIR=../shared/squad MINILM=<all-MiniLM-L6-v2 folder> OUT=repro \
#       bash bench/reproduce.sh students step2 step3 step4 search score
set -uo pipefail
cd "$(dirname "$0")/.."

SQUAD_DIR=${SQUAD_DIR:?set SQUAD_DIR to the folder with train-v1.1-subset.json and dev-v1.1.json}
MINILM=${MINILM:?set MINILM to the all-MiniLM-L6-v2 folder}
OUT=${OUT:-repro}
TRAIN_FILE=${TRAIN_FILE:-train-v1.1-subset.json}
MAX_SEQ=${MAX_SEQ:-384}; STRIDE=${STRIDE:-128}
BS=${BS:-32}; EVAL_BS=${EVAL_BS:-256}
EPOCHS_TEACHER=${EPOCHS_TEACHER:-2}; LR_TEACHER=${LR_TEACHER:-1e-4}
EPOCHS_S2=${EPOCHS_S2:-4}; EPOCHS_S3=${EPOCHS_S3:-3}; EPOCHS_S4=${EPOCHS_S4:-2}
LOG_STEPS=${LOG_STEPS:-200}
PRECISION=${PRECISION:---bf16}
LIMITS=${LIMITS:-}            # e.g. "--max_train_questions 2000 --max_eval_questions 1000" on CPU
SEARCH_BUDGET=${SEARCH_BUDGET:-150}; SEARCH_SUBSET=${SEARCH_SUBSET:-2000}; MIN_LENGTH=${MIN_LENGTH:-91}
SCORE_QUESTIONS=${SCORE_QUESTIONS:-}   # empty: the whole dev set
EXTRA_STEP4=${EXTRA_STEP4:-}  # more step-4 variants to run, e.g. "x5"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

mkdir -p "$OUT/done" "$OUT/logs" "$OUT/cache"
COMMON=(--data_dir "$SQUAD_DIR" --model_type bert --do_lower_case --train_file "$TRAIN_FILE"
        --predict_file dev-v1.1.json --max_seq_length "$MAX_SEQ" --doc_stride "$STRIDE"
        --per_gpu_train_batch_size "$BS" --per_gpu_eval_batch_size "$EVAL_BS" --cache_dir "$OUT/cache"
        --logging_steps "$LOG_STEPS" --save_steps 0 --overwrite_output_dir $PRECISION $LIMITS)
TEACHER=$OUT/teacher/checkpoint-best
STEP3=$OUT/step3/checkpoint-best

job() {  # job NAME command... : run once, log, mark done
  local name=$1; shift
  if [[ -e $OUT/done/$name ]]; then echo "[$name] done already"; return 0; fi
  local start=$SECONDS
  echo "[$name] start $(date +%T)"
  if "$@" >"$OUT/logs/$name.log" 2>&1; then
    echo "$((SECONDS - start))" >"$OUT/done/$name"; echo "[$name] ok in $((SECONDS - start)) s"
  else
    echo "[$name] FAILED after $((SECONDS - start)) s; last lines:"; tail -5 "$OUT/logs/$name.log"; return 1
  fi
}

step1() { python3 run_squad.py "${COMMON[@]}" --do_train --do_eval --evaluate_during_training --save_only_best \
  --learning_rate "$LR_TEACHER" --warmup_ratio 0.1 --num_train_epochs "$EPOCHS_TEACHER" "$@"; }
distill() { python3 run_squad.py "${COMMON[@]}" --teacher_model_type bert --teacher_model_name_or_path "$TEACHER" \
  --do_train --evaluate_during_training --save_only_best --gradient_accumulation_steps 1 "$@"; }
step4() { local out=$1; shift; distill --model_name_or_path "$STEP3" --learning_rate 2e-5 --state_loss_ratio 0.0 \
  --att_loss_ratio 0.0 --pred_distill --length_adaptive --num_sandwich 2 --length_drop_ratio_bound 0.2 \
  --num_train_epochs "$EPOCHS_S4" --output_dir "$OUT/$out" "$@"; }

stage_features() {  # build the feature caches once, before parallel jobs read them
  job features python3 - "$MINILM" "$SQUAD_DIR" "$TRAIN_FILE" "$MAX_SEQ" "$STRIDE" "$OUT/cache" <<'PY'
import sys
from transformers import AutoTokenizer
import utils_squad
model, data, train, seq, stride, cache = sys.argv[1:]
tok = AutoTokenizer.from_pretrained(model)
for name, training in ((train, True), ("dev-v1.1.json", False)):
    utils_squad.load_or_build_features(f"{data}/{name}", tok, max_seq_length=int(seq), doc_stride=int(stride),
                                       max_query_length=64, is_training=training, cache_dir=cache,
                                       overwrite_cache=False, max_examples=None)
PY
}

stage_students() {  # the teacher, the cut student, and the student fine-tuned without distillation
  stage_features || return 1
  job cut python3 -m tools.make_student --model_name_or_path "$MINILM" --layers 2,4,6 --output_dir "$OUT/student_init" || return 1
  job teacher step1 --model_name_or_path "$MINILM" --output_dir "$OUT/teacher" &
  job student_finetuned step1 --model_name_or_path "$OUT/student_init" --output_dir "$OUT/student_finetuned" &
  wait
  [[ -e $OUT/done/teacher ]]
}

stage_step2() {  # intermediate-layer distillation, TinyBERT's attention input and Intel's
  job step2 distill --model_name_or_path "$OUT/student_init" --learning_rate 5e-5 --num_train_epochs "$EPOCHS_S2" \
    --state_loss_ratio 1.0 --att_loss_ratio 1.0 --att_mse --logging_steps 1000 --output_dir "$OUT/step2" &
  job step2_probs distill --model_name_or_path "$OUT/student_init" --learning_rate 5e-5 --num_train_epochs "$EPOCHS_S2" \
    --state_loss_ratio 1.0 --att_loss_ratio 1.0 --att_mse --attention_loss_input probabilities --logging_steps 1000 \
    --output_dir "$OUT/step2_probs" &
  wait
  [[ -e $OUT/done/step2 ]]
}

stage_step3() {  # prediction-layer distillation
  for v in step2 step2_probs; do
    job ${v/step2/step3} distill --model_name_or_path "$OUT/$v/checkpoint-last" --learning_rate 3e-5 \
      --num_train_epochs "$EPOCHS_S3" --state_loss_ratio 0.0 --att_loss_ratio 0.0 --pred_distill \
      --output_dir "$OUT/${v/step2/step3}" &
  done
  wait
  [[ -e $OUT/done/step3 ]]
}

stage_step4() {  # the paper's flags and the ablations, all from the same step-3 student
  job step4 step4 step4 --layer_dropout_prob 0.2 &
  job step4_conventional_kl step4 step4_conventional_kl --layer_dropout_prob 0.2 --conventional_inplace_kl &
  job step4_no_layerdrop step4 step4_no_layerdrop --layer_dropout_prob 0 &
  # LAT's own setting: the full model learns the gold spans (no teacher), sub-models distil from it.
  job step4_gold_spans python3 run_squad.py "${COMMON[@]}" --model_name_or_path "$STEP3" --do_train \
    --evaluate_during_training --save_only_best --learning_rate 2e-5 --length_adaptive --num_sandwich 2 \
    --length_drop_ratio_bound 0.2 --layer_dropout_prob 0.2 --num_train_epochs "$EPOCHS_S4" \
    --output_dir "$OUT/step4_gold_spans" &
  job step4_full_weight_half step4 step4_full_weight_half --layer_dropout_prob 0.2 --sandwich_full_weight 0.5 &
  job step4_x2 step4 step4_x2 --layer_dropout_prob 0.2 --num_train_epochs $((2 * EPOCHS_S4)) &
  for extra in $EXTRA_STEP4; do  # x5: five times the epochs
    job step4_$extra step4 step4_$extra --layer_dropout_prob 0.2 --num_train_epochs $((${extra#x} * EPOCHS_S4)) &
  done
  wait
  [[ -e $OUT/done/step4 ]]
}

stage_search() {  # step 5 on the step-4 student, Optuna (no SigOpt token on these machines)
  job search env MODEL_DIR="$OUT/step4/checkpoint-best" SQUAD_DIR="$SQUAD_DIR" OUTPUT_DIR="$OUT/search" \
    MAX_SEQ_LENGTH="$MAX_SEQ" BUDGET="$SEARCH_BUDGET" MIN_LENGTH="$MIN_LENGTH" SUBSET="$SEARCH_SUBSET" \
    EVAL_BATCH_SIZE="$EVAL_BS" bash run-sigopt-search.sh --cache_dir "$OUT/cache" $PRECISION
}

stage_score() {  # every model on the whole dev set: length sweeps, ablation points, the front
  local q=(); [[ -n $SCORE_QUESTIONS ]] && q=(--max_questions "$SCORE_QUESTIONS")
  local ev=(python3 -m bench.evaluate_configs --dev_file "$SQUAD_DIR/dev-v1.1.json" --max_seq_length "$MAX_SEQ"
            --doc_stride "$STRIDE" --batch_size "$EVAL_BS" --cache_dir "$OUT/cache" $PRECISION "${q[@]}")
  mkdir -p "$OUT/scores"
  job score_sweeps "${ev[@]}" --model "$TEACHER" --model "$STEP3" --model "$OUT/step4/checkpoint-best" \
    --rates 1.0,0.95,0.9,0.85,0.8,0.75,0.7,0.65,0.6,0.55,0.5 --output "$OUT/scores/sweeps.json" &
  local models=()
  for d in "$OUT"/student_finetuned "$OUT"/step3_probs "$OUT"/step4_*; do
    [[ -d $d/checkpoint-best ]] && models+=(--model "$d/checkpoint-best")
  done
  job score_ablations "${ev[@]}" "${models[@]}" --rates 1.0,0.75,0.6 --output "$OUT/scores/ablations.json" &
  [[ -e $OUT/done/search ]] && job score_front "${ev[@]}" --model "$OUT/step4/checkpoint-best" \
    --front "$OUT/search/pareto_front.csv" --output "$OUT/scores/front.json" &
  wait
}

for stage in "$@"; do
  echo "=== stage $stage $(date +%T)"
  "stage_$stage" || { echo "stage $stage failed"; exit 1; }
done
