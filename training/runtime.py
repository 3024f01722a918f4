"""Where the work runs: device, torch.distributed ranks, seeds and autocast precision."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from training.settings import RuntimeSettings


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = -1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def setup_runtime(settings: RuntimeSettings) -> Runtime:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    use_cuda = torch.cuda.is_available() and not settings.no_cuda
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", settings.local_rank))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        return Runtime(device, dist.get_rank(), world_size, local_rank)
    return Runtime(torch.device("cuda" if use_cuda else "cpu"))


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
