import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N` runs N workers: one thread each (and in the scripts they start), so the workers
    # share the cores instead of each spreading over all of them.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    import torch

    torch.set_num_threads(1)


# One ONNX cache folder for the whole run, shared by every test worker (the workers inherit the
# variable): a tiny model's export at a configuration is built once per run (onnx_cache's lock per
# key), not once per test module and worker. Exports are most of the suite's time.
ONNX_STORE_ENV = "DYNAMIC_TINYBERT_TEST_ONNX_STORE"
_store_made_here: str | None = None  # the folder this process made (and removes at the end)


def pytest_configure(config):
    global _store_made_here
    if not os.environ.get("PYTEST_XDIST_WORKER") and not os.environ.get(ONNX_STORE_ENV):
        import tempfile

        _store_made_here = os.environ[ONNX_STORE_ENV] = tempfile.mkdtemp(prefix="dynamic-tinybert-tests-onnx-")


def pytest_collection_modifyitems(config, items):
    """The tests marked ``long(seconds)`` first, longest first (the quickstart test alone takes
    about two minutes). With ``--dist load --maxschedchunk 1`` (pytest.ini) each worker is handed
    a test or two at a time, so the long ones start early on both workers and the short ones fill
    in: the workers end within seconds of each other."""
    def expected_seconds(item):
        marker = item.get_closest_marker("long")
        return marker.args[0] if marker is not None else 0
    items.sort(key=expected_seconds, reverse=True)  # a stable sort: the rest keep their order


def pytest_unconfigure(config):
    if _store_made_here is not None:
        import shutil

        shutil.rmtree(_store_made_here, ignore_errors=True)
        os.environ.pop(ONNX_STORE_ENV, None)
