#!/usr/bin/env bash
# Dynamic-TinyBERT: search per-layer length configurations (F1 vs compute) for a trained model.
#
# Edit the parameters below, or override any of them from the environment, e.g.
#   MODEL_DIR=output/dynamic_tinybert/checkpoint-best BUDGET=50 ./run-sigopt-search.sh
# Extra arguments are passed on to run_squad.py, e.g. ./run-sigopt-search.sh --search_seed 7
# OUTPUT_DIR keeps earlier results: a search of another model, subset or data there stops with the
# difference; use another OUTPUT_DIR, or pass --search_restart (moves the old files aside).
#
# With SIGOPT_API_TOKEN set (and optionally SIGOPT_API_URL) the search uses SigOpt, as in the
# paper; without it, it says so and searches offline with Optuna.
#
# LENGTH_SPACE=relative searches keep fractions of each batch's longest sequence (from MIN_FRACTION
# to 1) on sorted, longest-padded batches, as inference.py runs them. At its end the search writes
# the front into MODEL_DIR/length_configs.json: inference.py --speedup X / --max_f1_drop D pick from it.
set -euo pipefail

: "${MODEL_DIR:=output/dynamic_tinybert/checkpoint-best}"   # trained Dynamic-TinyBERT folder
: "${SQUAD_DIR:=$(dirname "$0")/../shared/squad}"            # folder holding the dev set
: "${PREDICT_FILE:=dev-v1.1.json}"                          # SQuAD v1.1 dev file in SQUAD_DIR
: "${OUTPUT_DIR:=output/sigopt_search}"                     # search_results.csv etc. go here
: "${MAX_SEQ_LENGTH:=384}"
: "${DOC_STRIDE:=128}"
: "${EVAL_BATCH_SIZE:=16}"
: "${BUDGET:=150}"                                          # configurations to evaluate
: "${MIN_LENGTH:=91}"                                       # fewest tokens a layer may keep (absolute)
: "${LENGTH_SPACE:=absolute}"                               # absolute (token counts) | relative (fractions)
: "${MIN_FRACTION:=0.25}"                                   # smallest keep fraction (relative)
: "${BATCHING:=}"                                           # padded | sorted; empty = padded for absolute, sorted for relative
: "${OBJECTIVE:=macs}"                                      # macs | time
: "${SUBSET:=}"                                             # first N dev questions; empty = all
: "${BACKEND:=}"                                            # sigopt | optuna | evolution | constant

if [[ -z "${BACKEND}" ]]; then
  if [[ -n "${SIGOPT_API_TOKEN:-}" ]]; then
    BACKEND=sigopt
  else
    echo "SIGOPT_API_TOKEN is not set: searching offline with Optuna (--search_backend optuna) instead of SigOpt."
    BACKEND=optuna
  fi
fi

optional_args=()
if [[ -n "${SUBSET}" ]]; then
  optional_args=(--search_subset "${SUBSET}")
fi
if [[ -n "${BATCHING}" ]]; then
  optional_args+=(--search_batching "${BATCHING}")
fi

python "$(dirname "$0")/run_squad.py" \
  --model_type bert \
  --model_name_or_path "${MODEL_DIR}" \
  --data_dir "${SQUAD_DIR}" \
  --predict_file "${PREDICT_FILE}" \
  --do_lower_case \
  --max_seq_length "${MAX_SEQ_LENGTH}" \
  --doc_stride "${DOC_STRIDE}" \
  --per_gpu_eval_batch_size "${EVAL_BATCH_SIZE}" \
  --output_dir "${OUTPUT_DIR}" \
  --overwrite_output_dir \
  --do_search \
  --search_backend "${BACKEND}" \
  --search_budget "${BUDGET}" \
  --search_min_length "${MIN_LENGTH}" \
  --search_length_space "${LENGTH_SPACE}" \
  --search_min_fraction "${MIN_FRACTION}" \
  --search_objective "${OBJECTIVE}" \
  "${optional_args[@]+"${optional_args[@]}"}" \
  "$@"
