"""Saved models load without zoo; models build and run under the JAX backend."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import zoo


def run_python(code, **env):
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
        timeout=300,
        cwd="/",  # so the repository is not on the path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def run_in_backend(code, backend, **env):
    """`run_python` under Keras' `backend`; the test is skipped where that backend is not installed."""
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed: pip install -e '.[dev]'")
    return run_python(code, KERAS_BACKEND=backend, **env)


def test_keras_file_reloads_safely_without_zoo(tmp_path):
    model = zoo.vgg11_bn(num_classes=3)
    x = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict(x, verbose=0))
    model.save(tmp_path / "model.keras")
    run_python(f"""
        import sys, numpy as np, keras
        model = keras.saving.load_model({str(tmp_path / 'model.keras')!r}, safe_mode=True)
        assert "zoo" not in sys.modules
        y = model.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0)
        np.testing.assert_array_equal(y, np.load({str(tmp_path / 'y.npy')!r}))
    """)


@pytest.mark.memory_heavy
@pytest.mark.slow
def test_every_model_builds_and_runs_under_jax_without_tensorflow():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = run_python(
        """
        import sys, numpy as np, keras, zoo
        assert keras.backend.backend() == "jax"
        x = np.zeros((1, 32, 32, 3), "float32")
        for name in zoo.list_models():
            model = zoo.get_model(name)
            assert model.count_params() == zoo.model_info(name).params, name
            assert np.isfinite(np.asarray(model(x))).all(), name
        assert "tensorflow" not in sys.modules, "the builders must not import tensorflow"
        print("ok", len(zoo.list_models()))
        """,
        KERAS_BACKEND="jax",
        PYTHONPATH=repo,
        JAX_PLATFORMS="cpu",
    )
    assert out.strip() == "ok 10"
