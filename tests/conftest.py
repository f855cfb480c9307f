"""Shared fixtures: seeds, devices and dtypes."""

import pyro
import pytest
import torch

# Tiny tensors on few cores: one intra-op thread is faster and keeps shared machines responsive.
torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _seed_and_clear():
    """Every test starts from the same seeds and an empty Pyro param store."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return request.param
