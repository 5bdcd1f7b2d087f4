import os

import pyro
import pytest
import torch

from ppmodels.data import save_mnist_cache, synthetic_images

# Under pytest-xdist each worker takes an equal share of the cores (two workers on two cores: one
# thread each), so the workers do not oversubscribe the machine.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _WORKERS))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """A small MNIST-shaped cache in a temporary $PPMODELS_DATA (no download)."""
    train_x, train_y = synthetic_images(600, seed=1)
    test_x, test_y = synthetic_images(200, seed=2)
    root = tmp_path / "data"
    save_mnist_cache({"train_images": train_x, "train_labels": train_y,
                      "test_images": test_x, "test_labels": test_y}, root)
    monkeypatch.setenv("PPMODELS_DATA", str(root))
    return root


def devices():
    out = ["cpu"]
    out.append(pytest.param("cuda", marks=pytest.mark.cuda))
    return out
