"""Shared helpers of the search tests: a synthetic evaluation function (no model needed), the
search's flags, its CSV, a brute-force Pareto front, and a hand-written length menu."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import search


class SyntheticTask:
    """f1 increases with each layer's length (later layers matter more); macs is analytic."""

    def __init__(self, num_layers: int, max_length: int, fail_on=()):
        self.num_layers = num_layers
        self.max_length = max_length
        self.calls: list[tuple[int, ...]] = []
        self.fail_on = {tuple(c) for c in fail_on}

    def macs(self, config) -> int:
        return sum(1000 * length + 7 * length * length for length in config)

    def f1(self, config) -> float:
        loss = sum((i + 1) * (1 - length / self.max_length) ** 2 for i, length in enumerate(config))
        return 90.0 - 4.0 * loss

    def __call__(self, config):
        config = tuple(config)
        self.calls.append(config)
        if config in self.fail_on:
            raise RuntimeError(f"synthetic failure for {config}")
        f1 = self.f1(config)
        return {"f1": f1, "exact_match": f1 - 8.0, "macs": self.macs(config),
                "eval_seconds": 0.001 * sum(config), "questions": 50}

    @property
    def full_macs(self) -> int:
        return self.macs((self.max_length,) * self.num_layers)


def constant_rate_config(max_length: int, num_layers: int, keep_rate: float) -> tuple[int, ...]:
    """The search's sweep configuration at ``keep_rate`` (each layer keeps that fraction)."""
    return search.sweep_config(search.SearchSpace(num_layers, 1, max_length), keep_rate)


def make_args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    search.add_search_args(parser)
    return parser.parse_args(["--do_search", *extra])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def config_of(row: dict) -> tuple[int, ...]:
    return tuple(json.loads(row["length_config"]))


def assert_in_space(config, num_layers, min_length, max_length):
    assert len(config) == num_layers
    assert all(min_length <= x <= max_length for x in config), config
    assert all(a >= b for a, b in zip(config, config[1:])), config


def brute_force_pareto(points):
    """O(n^2) reference: dominated if another point has f1 >= and compute <=, one strict."""
    flags = []
    for i, (f1_i, c_i) in enumerate(points):
        dominated = any(f1_j >= f1_i and c_j <= c_i and (f1_j > f1_i or c_j < c_i)
                        for j, (f1_j, c_j) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def entry(config, f1, speedup, source="optuna"):
    return {"length_config": config, "f1": f1, "exact_match": f1 - 10, "macs_ratio": speedup * 1.1,
            "measured_speedup": speedup, "speedup": speedup, "eval_seconds": 10.0 / speedup, "source": source}


MENU = {
    "format": "dynamic-tinybert-length-menu", "version": 1, "length_space": "absolute",
    "speedup_basis": "measured", "batching": "sorted", "batch_size": 4, "max_seq_length": 128,
    "doc_stride": 32, "max_query_length": 64, "num_hidden_layers": 3, "questions": 15,
    "weights_sha256": None,
    "full": entry([128, 128, 128], 80.0, 1.0, "full"),
    "configurations": [
        entry([120, 100, 80], 79.5, 1.5),   # A
        entry([110, 90, 60], 79.5, 1.8),    # B: A's F1, faster
        entry([100, 70, 50], 78.0, 2.5),    # C
        entry([90, 60, 40], 78.0, 2.5),     # D: an exact tie with C
        entry([64, 40, 30], 70.0, 4.0),     # E: the fastest
    ],
}
