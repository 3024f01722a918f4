"""One search worker process for the shared-study tests: ``python search_worker.py SPEC.json``, with
``helpers.subprocess_env()``.

SPEC: ``argv`` (the search flags), ``output_dir``, ``log`` (each configuration this worker measured
is appended there as a JSON line once measured), ``sleep`` (seconds per evaluation, so that a
kill lands in one), and optionally ``hang_marker``: at its first search trial (a configuration
that is neither the full one nor a sweep's) the worker writes the configuration there and sleeps
until it is killed. The evaluation is test_search's SyntheticTask (3 layers of 30 tokens).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import search
from search_helpers import SyntheticTask, make_args

NUM_LAYERS, MAX_LENGTH = 3, 30
MEASURED_ON = {"weights_sha256": "w" * 64, "predict_file_sha256": "d" * 64}
MENU_INFO = {"length_space": "absolute", "batching": "padded", "batch_size": 8, "max_seq_length": MAX_LENGTH,
             "doc_stride": 10, "max_query_length": 8, "num_hidden_layers": NUM_LAYERS, "objective": "macs",
             **MEASURED_ON}


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    args = make_args(*spec["argv"])
    task = SyntheticTask(NUM_LAYERS, MAX_LENGTH)
    space = search.SearchSpace(NUM_LAYERS, args.search_min_length, MAX_LENGTH)
    baselines = {space.full_config} | {search.sweep_config(space, r) for r in search.parse_rates(args.search_rates)}

    def evaluate(config):
        config = tuple(config)
        if spec.get("hang_marker") and config not in baselines:
            Path(spec["hang_marker"]).write_text(json.dumps(list(config)))
            time.sleep(3600)  # killed here, in the middle of the trial
        time.sleep(spec["sleep"])
        result = task(config)
        with open(spec["log"], "a") as log:
            log.write(json.dumps(list(config)) + "\n")
        return result

    search.run_search_from_args(args, evaluate, NUM_LAYERS, MAX_LENGTH, task.full_macs, spec["output_dir"],
                                measured_on=MEASURED_ON, menu_info=MENU_INFO)


if __name__ == "__main__":
    main(sys.argv[1])
