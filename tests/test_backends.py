"""`zoo train --backend`, and the torch backend: train, resume after kill -9, evaluate, Grad-CAM;
a torch-trained model file loads under TensorFlow and exports."""

import importlib.util
import json

import numpy as np
import pytest

import keras
from zoo import backends, export, lenet5, viz
from zoo.cli import main

from conftest import ROOT
from test_portability import run_python
from test_training import epochs_logged, finished, kill_after_backup, quick_args, run_zoo, zoo_process

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed: pip install -e '.[dev]'")


def test_auto_keeps_keras_backend_and_otherwise_picks_by_machine(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert backends.choose("auto") == ("tensorflow", "KERAS_BACKEND is set")
    monkeypatch.delenv("KERAS_BACKEND")
    monkeypatch.setattr(backends, "installed", lambda: ["tensorflow", "jax", "torch"])
    monkeypatch.setattr(backends, "has_nvidia_gpu", lambda: False)
    assert backends.choose("auto") == ("tensorflow", "auto: CPU, tensorflow (installed: tensorflow, jax, torch)")
    monkeypatch.delenv("KERAS_BACKEND")  # choose() set it
    monkeypatch.setattr(backends, "has_nvidia_gpu", lambda: True)
    monkeypatch.setitem(backends.sys.modules, "keras", None)  # as before Keras is imported
    assert backends.choose("auto") == ("jax", "auto: an NVIDIA GPU, and jax is installed")


def test_a_backend_that_is_not_installed_or_unknown_is_one_line_naming_what_is(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(backends, "installed", lambda: ["tensorflow", "jax"])
    assert main(["train", "lenet5_cifar10", "--backend", "torch", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "zoo train: error: The torch backend is not installed (pip install torch). Installed: tensorflow, jax. Received: backend='torch'"
    ]
    with pytest.raises(SystemExit):
        main(["train", "lenet5_cifar10", "--backend", "theano"])
    assert "argument --backend: invalid choice: 'theano'" in capsys.readouterr().err
    monkeypatch.setattr(backends, "installed", lambda: ["tensorflow", "jax", "torch"])
    assert main(["train", "lenet5_cifar10", "--backend", "jax", "--out", str(tmp_path / "run")]) == 2  # Keras runs on TF here
    assert "Keras already runs on tensorflow in this process; it cannot switch to jax" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_backend_and_how_it_was_chosen_are_recorded(small_cifar10, tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setattr(backends, "has_nvidia_gpu", lambda: False)
    assert main([*quick_args(small_cifar10, tmp_path / "run", epochs=1, limit=200)]) == 0
    recorded = json.loads((tmp_path / "run" / "results.json").read_text())["backend"]
    assert recorded["used"] == "tensorflow" and recorded["requested"] == "auto" and recorded["why"].startswith("auto: CPU, tensorflow")


@pytest.mark.memory_heavy
@pytest.mark.slow
@needs_torch
def test_a_recipe_trains_and_resumes_under_torch_and_its_model_exports_under_tensorflow(small_cifar10, tmp_path, capsys):
    args = [*quick_args(small_cifar10, tmp_path / "torch", epochs=3, limit=600), "--backend", "torch"]
    reference = [*quick_args(small_cifar10, tmp_path / "reference", epochs=3, limit=600), "--backend", "torch"]
    uninterrupted = zoo_process(reference)  # beside the interrupted run: the suite's time
    proc = zoo_process(args)
    kill_after_backup([proc], tmp_path / "torch", 1)
    out = run_zoo(args)
    assert "lenet5 (62,094 params, float32) on" in finished(uninterrupted)
    assert "resuming from epoch" in out
    results = json.loads((tmp_path / "torch" / "results.json").read_text())
    assert results["backend"] == {"used": "torch", "requested": "torch", "why": "--backend"}
    assert results["versions"]["backend"] == "torch" and len(results["resumed_from_epoch"]) == 1
    assert epochs_logged(tmp_path / "torch") == [0, 1, 2]
    for a, b in zip(keras.saving.load_model(tmp_path / "torch" / "model.keras").get_weights(),
                    keras.saving.load_model(tmp_path / "reference" / "model.keras").get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)  # resumed = uninterrupted, up to float reordering
    # Under TensorFlow (this process): the torch-trained file loads safely, evaluates and exports.
    model = keras.saving.load_model(tmp_path / "torch" / "model.keras", safe_mode=True)
    assert main(["eval", str(tmp_path / "torch"), "--data-dir", str(small_cifar10), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-9)
    images = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    record = export.export_model(model, tmp_path / "export", formats=("tflite",), quantize=("float32",), verification=images)
    assert record["variants"]["float32"]["verification"]["passed"]


@pytest.mark.slow
@needs_torch
def test_eval_predict_and_grad_cam_under_torch(small_cifar10, tmp_path, capsys):
    """Grad-CAM's gradient from torch's autograd equals TensorFlow's, on the released LeNet-5; `zoo eval` and
    `zoo predict` run under torch (one torch process for all three)."""
    cat = small_cifar10 / "test" / "cat" / "0000.jpg"
    image = viz.load_image(cat, lenet5())
    np.save(tmp_path / "image.npy", image)
    expected = viz.grad_cam(lenet5(weights="cifar10"), image, 3)
    out = run_python(f"""
        import contextlib, io, json
        import numpy as np, keras
        from zoo import lenet5, viz
        from zoo.cli import main
        assert keras.backend.backend() == "torch"
        cam = viz.grad_cam(lenet5(weights="cifar10"), np.load({str(tmp_path / 'image.npy')!r}), 3)
        np.save({str(tmp_path / 'cam.npy')!r}, cam)

        def printed(args):
            with contextlib.redirect_stdout(io.StringIO()) as out:
                assert main(args) == 0
            return json.loads(out.getvalue())

        print(json.dumps([
            printed(["eval", "lenet5", "--weights", "cifar10", "--data-dir", {str(small_cifar10)!r}, "--limit", "100", "--json"]),
            printed(["predict", "lenet5", "--weights", "cifar10", {str(cat)!r}, "--top", "1", "--json"]),
        ]))
    """, KERAS_BACKEND="torch", PYTHONPATH=str(ROOT))
    np.testing.assert_allclose(np.load(tmp_path / "cam.npy"), expected, atol=1e-4)
    evaluated, predicted = json.loads(out.strip().splitlines()[-1])
    assert main(["eval", "lenet5", "--weights", "cifar10", "--data-dir", str(small_cifar10), "--limit", "100", "--json"]) == 0
    assert evaluated["accuracy"] == json.loads(capsys.readouterr().out)["accuracy"]  # the same 100 images, the same answers
    assert main(["predict", "lenet5", "--weights", "cifar10", str(cat), "--top", "1", "--json"]) == 0
    [here] = json.loads(capsys.readouterr().out)
    assert predicted[0]["top"][0]["class"] == here["top"][0]["class"] == "cat"
    assert predicted[0]["top"][0]["probability"] == pytest.approx(here["top"][0]["probability"], abs=1e-5)
