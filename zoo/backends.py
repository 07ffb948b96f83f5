"""Which Keras backend a command runs on: `--backend auto|tensorflow|jax|torch`, decided before Keras
is imported (Keras reads `KERAS_BACKEND` once, at import). No Keras import here.

`auto` keeps a `KERAS_BACKEND` the user set; otherwise it takes JAX on a machine with an NVIDIA GPU
(the releases were trained so) and TensorFlow on a CPU, where it trained fastest of the Keras
backends in `benchmarks/train_speed.py` (see the README's speed table), else whatever is installed.
"""

import importlib.util
import os
import pathlib
import sys

BACKENDS = ("tensorflow", "jax", "torch")
HOW_TO_INSTALL = {"tensorflow": "pip install tensorflow", "jax": "pip install 'jax[cpu]' (or jax[cuda12])", "torch": "pip install torch"}


def installed():
    """The Keras backends whose package is installed (and not blocked), in BACKENDS order."""
    return [name for name in BACKENDS if _findable(name)]


def _findable(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a blocked or broken package
        return False


def has_nvidia_gpu():
    """Whether an NVIDIA driver lists a GPU (read without importing any framework)."""
    gpus = pathlib.Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def choose(requested="auto"):
    """`(backend, why)` for `requested`, set as KERAS_BACKEND; a ValueError naming what is installed
    for a backend that is not, or one Keras cannot switch to any more in this process."""
    available = installed()
    if requested == "auto":
        if os.environ.get("KERAS_BACKEND"):
            backend, why = os.environ["KERAS_BACKEND"], "KERAS_BACKEND is set"
        elif has_nvidia_gpu() and "jax" in available:
            backend, why = "jax", "auto: an NVIDIA GPU, and jax is installed"
        elif available:
            backend = "tensorflow" if "tensorflow" in available else available[0]
            why = f"auto: CPU, {backend} (installed: {', '.join(available)})"
        else:
            raise ValueError(f"No Keras backend is installed: {'; '.join(HOW_TO_INSTALL.values())}.")
    elif requested in BACKENDS:
        backend, why = requested, "--backend"
    else:
        raise ValueError(f"Unknown backend. Valid: auto, {', '.join(BACKENDS)}. Received: backend={requested!r}")
    if backend not in available:
        raise ValueError(
            f"The {backend} backend is not installed ({HOW_TO_INSTALL.get(backend, backend)}). "
            f"Installed: {', '.join(available) or 'none'}. Received: backend={backend!r}"
        )
    running = sys.modules.get("keras")
    if running is not None and running.backend.backend() != backend:
        raise ValueError(f"Keras already runs on {running.backend.backend()} in this process; it cannot switch to {backend}.")
    os.environ["KERAS_BACKEND"] = backend
    return backend, why
