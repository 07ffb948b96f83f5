import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10"


@pytest.fixture(scope="session")
def cifar10_dir():
    """The real CIFAR-10 image folders beside the repository (read-only)."""
    if not (CIFAR10 / "train").is_dir():
        pytest.skip(f"CIFAR-10 image folders not found at {CIFAR10}")
    return CIFAR10
