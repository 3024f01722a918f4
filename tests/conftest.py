import os
import sys
from pathlib import Path

# The project's modules live at the repository's top level, as in the reference code.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N` runs N workers: one thread each (and in the scripts they start), so the workers
    # share the cores instead of each spreading over all of them.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    import torch

    torch.set_num_threads(1)
