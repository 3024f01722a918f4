"""LAT's evolutionary search: mutation and crossover on the Pareto front."""
from __future__ import annotations

import argparse
import logging
import random
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

import length_drop

from .space import SearchSpace, Units
from .evaluator import BudgetExhausted, Evaluator, FATAL_ERRORS
from .front import pareto_flags

logger = logging.getLogger("search")


def length_fraction(config: Sequence[int], max_length: int) -> float:
    """LAT's ``approx_ratio``: tokens processed relative to the full model (sum / (n * max))."""
    return sum(config) / (len(config) * max_length)


def drop_ratio_for_fraction(target: float, space: SearchSpace) -> float:
    """LAT's ``inverse``: bisect the constant drop ratio whose configuration (floored at the
    search's min length) has length fraction ``target``; uses the real layers / max length."""
    low, high = 0.0, 1.0
    while high - low > 1e-12:
        mid = (low + high) / 2
        config = length_drop.constant_drop_config(space.max_length, space.num_layers, mid, space.min_length)
        if target <= length_fraction(config, space.max_length):
            low = mid
        else:
            high = mid
    return low


class EvolutionSearch:
    """LAT's evolutionary search: keep the Pareto front as population, grow it by mutation and
    crossover, for ``evo_iter`` iterations or until the budget of new evaluations is spent.
    Genes are points of the space's integer grid (keep fractions in grid steps in the relative
    space), so LAT's integer operators apply unchanged."""

    def __init__(self, args: argparse.Namespace, evaluator: Evaluator, space: SearchSpace):
        self.args = args
        self.evaluator = evaluator
        self.space = space
        self.rng = random.Random(args.search_seed)
        self.population: list[Units] = []
        self.iterations_done = 0

    def score(self, gene: Units) -> tuple[float, float]:
        row = self.evaluator.cached(gene)
        return self.evaluator.compute(row), row["f1"]

    def add_gene(self, gene: Units) -> bool:
        """Measure ``gene`` (or reuse its row) and add it to the population if new there."""
        assert self.space.contains(gene), gene
        try:
            self.evaluator(gene, "evolution", budget=self.args.search_budget)
        except (BudgetExhausted, *FATAL_ERRORS):
            raise
        except Exception as err:
            logger.warning("evaluation of %s failed: %r", list(gene), err)
            return False
        if gene in self.population:
            return False
        self.population.append(gene)
        return True

    def pareto_frontier(self) -> list[Units]:
        """Keep only non-dominated genes, sorted by compute."""
        points = [(self.score(g)[1], self.score(g)[0]) for g in self.population]
        flags = pareto_flags(points)
        front = [g for g, keep in zip(self.population, flags) if keep]
        self.population = sorted(front, key=self.score)
        return self.population

    def mutate(self) -> bool:
        """Re-draw each layer with probability mutation_prob between its neighbours' lengths."""
        parent = self.rng.choice(self.population)
        child: list[int] = []
        last = self.space.num_layers - 1
        for i in range(self.space.num_layers):
            if self.rng.random() < self.args.mutation_prob:
                upper = self.space.max_length if i == 0 else child[i - 1]
                lower = self.space.min_length if i == last else parent[i + 1]
                child.append(self.rng.randint(lower, upper))
            else:
                child.append(parent[i])
        return self.add_gene(tuple(child))

    def crossover(self) -> bool:
        """Layer-wise mean of two parents, rounded up (stays non-increasing and in bounds)."""
        if len(self.population) < 2:
            return False
        first, second = self.rng.sample(self.population, 2)
        return self.add_gene(tuple((a + b + 1) // 2 for a, b in zip(first, second)))

    def _grow(self, operator: Callable[[], bool], size: int) -> None:
        """Call ``operator`` until it added ``size`` genes; give up after 100 * size tries
        (LAT looped forever when no new gene could be produced)."""
        added, tries = 0, 0
        while added < size and tries < 100 * max(size, 1):
            tries += 1
            added += bool(operator())

    def initial_genes(self) -> list[Units]:
        """Smallest and full configuration, then ``population_size`` constant-drop configurations
        whose length fractions are evenly spaced between the two (LAT)."""
        space = self.space
        lowest = length_fraction(space.smallest, space.max_length)
        count = self.args.population_size
        genes = [space.smallest, space.full]
        for k in range(1, count + 1):
            target = lowest + (1.0 - lowest) * k / (count + 1)
            ratio = drop_ratio_for_fraction(target, space)
            genes.append(length_drop.constant_drop_config(space.max_length, space.num_layers, ratio,
                                                          space.min_length))
        return genes

    def run(self) -> dict:
        try:
            for gene in self.initial_genes():
                self.add_gene(gene)
            for iteration in range(self.args.evo_iter + 1):
                front = self.pareto_frontier()
                logger.info("evolution iteration %d: front size %d, evaluated %d", iteration, len(front),
                            self.evaluator.store.count("evolution"))
                self.iterations_done = iteration
                if iteration == self.args.evo_iter:
                    break
                self._grow(self.mutate, self.args.mutation_size)
                self._grow(self.crossover, self.args.crossover_size)
        except BudgetExhausted:
            logger.info("evolution: budget of %d evaluations reached", self.args.search_budget)
        return {"iterations": self.iterations_done, "front_size": len(self.pareto_frontier())}


def run_evolution(args: argparse.Namespace, evaluator: Evaluator, space: SearchSpace,
                  output_dir: Path) -> dict:
    """LAT's evolution with a progress bar over the evaluation budget (``output_dir`` unused:
    same signature as the other backends)."""
    with tqdm(total=args.search_budget, desc="evolution search", unit="config") as bar:
        evaluator.progress = bar
        try:
            return EvolutionSearch(args, evaluator, space).run()
        finally:
            evaluator.progress = None
