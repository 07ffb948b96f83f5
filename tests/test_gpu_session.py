"""The one-command GPU path (benchmarks/gpu_session.py) and the same-data PyTorch reference, run on this CPU
under JAX with a few hundred images: pack -> run -> unpack -> zoo eval, and the deadline."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import keras
from zoo import augment
from zoo.cli import main
from zoo.data import load_test_images, read_image

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_session  # noqa: E402
import paired  # noqa: E402

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed: pip install -e '.[dev]'")


# As on the GPU machine, which has JAX and PyTorch but no TensorFlow: the session and every process it
# starts (the jobs, the float16 conversion) find no TensorFlow (which would also cost each 4 s to import).
NO_TENSORFLOW = """
import sys


class WithoutTensorFlow:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
            return None  # as no finder finds what is not installed
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)


sys.meta_path[:] = [WithoutTensorFlow(finder) for finder in sys.meta_path]
"""


@pytest.fixture(scope="module")
def lease_env(tmp_path_factory):
    site = tmp_path_factory.mktemp("no_tensorflow")
    (site / "sitecustomize.py").write_text(NO_TENSORFLOW)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": path}


# The options the VGG and AlexNet recipes train with on the lease, here on LeNet-5 (a few seconds), under JAX.
LEASE_OPTIONS = [
    "--set", "training.whitening_init=true", "--set", "training.dirac_init=true", "--set", "optimizer.batch_norm_bias_lr_scale=64",
    "--set", "augment.alternate_flip=true", "--set", "augment.cutout=8", "--set", "training.label_smoothing=0.2",
]


def session(env, *args, timeout=600):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_session.py"), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def packed(small_cifar10, tmp_path_factory):
    dest = tmp_path_factory.mktemp("pack")
    gpu_session.pack(small_cifar10, dest, wheels=False)
    return dest


def test_pack_keeps_every_image_file_byte_for_byte(packed, small_cifar10, tmp_path):
    assert gpu_session.unpack_images(packed / gpu_session.DATA_FILE, tmp_path) == sum(1 for p in small_cifar10.rglob("*.jpg"))
    for original in sorted(small_cifar10.rglob("*.jpg"))[::37]:
        assert (tmp_path / original.relative_to(small_cifar10)).read_bytes() == original.read_bytes()


@pytest.mark.memory_heavy
@pytest.mark.slow
@needs_torch
def test_a_session_trains_zoo_and_the_reference_and_its_runs_come_back_for_zoo_eval(packed, lease_env, small_cifar10, tmp_path, capsys, monkeypatch):
    # A machine kept warm between calls still holds the last call's finished run of the same recipe: this
    # call trains afresh in a folder of its own and brings back only its own runs.
    earlier = tmp_path / "work" / "call-20261128-000000" / "runs" / "lenet5_cifar10"
    earlier.mkdir(parents=True)
    (earlier / "results.json").write_text('{"earlier call": true}')
    # As on the lease: a smoke pass, the epoch timing of both jobs running together, the schedule sized from it.
    out = session(
        lease_env, "run", "--out", tmp_path / "out", "--pack", packed, "--work", tmp_path / "work", "--minutes", 4, "--max-epochs", 2, "--min-epochs", 1,
        "--recipes", "lenet5_cifar10", "--references", "lenet5", "--limit", 300, "--smoke-images", 256,
        "--set", "data.validation_size=100", "--set", "training.tta_flip=false", *LEASE_OPTIONS,
        # The step timing after the trainings, as `--speed` runs it on the lease (there vgg16_bn and torch.compile too).
        "--speed", "--speed-models", "lenet5", "--speed-only", "zoo train", "--speed-batch", 32, "--speed-steps", 3,
    )
    assert "smoke pass (256 images, 1 epoch, 2 jobs at once): all passed" in out
    assert re.search(r"probe \(2 jobs at once, full data, \d+ s\): seconds per epoch lenet5_cifar10 [\d.]+, reference_lenet5 [\d.]+", out)
    assert "plan: lenet5_cifar10 2 epochs, reference_lenet5 2 epochs" in out
    assert '"lenet5_cifar10": "finished"' in out and '"reference_lenet5": "finished"' in out
    parts = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in parts] == ["runs.tar.000"] and parts[0].stat().st_size <= gpu_session.PART_BYTES
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")  # what unpack sets, for this test only
    gpu_session.main(["unpack", str(tmp_path / "out"), "--into", str(tmp_path / "runs")])  # in this process, as after the lease
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "lenet5_cifar10"
    assert f"{run}: model.keras from its float16 weights (62,094 params)" in out
    speed = json.loads((tmp_path / "runs" / "speed.json").read_text())["models"]["lenet5"]["details"]
    assert [(label, s["backend"]) for label, s in speed.items()] == [("zoo train (recipe, augmentation) Keras/jax", "jax")]
    assert next(iter(speed.values()))["images_per_second"] > 0 and '"speed": "speed.json"' in out
    assert all(line in (run / "recipe.toml").read_text() for line in ("whitening_init = true", "dirac_init = true", "cutout = 8"))
    assert "earlier call" not in (run / "results.json").read_text() and len(list((tmp_path / "work").glob("call-*"))) == 2
    assert not (run / "backup").exists() and not list((tmp_path / "runs").glob(".*"))
    # The weights that came back are the trained ones, rounded to float16 (as a release keeps them).
    [trained_file] = (tmp_path / "work").glob("call-*/runs/lenet5_cifar10/model.keras")
    trained = keras.saving.load_model(trained_file).get_weights()
    for back, original in zip(keras.saving.load_model(run / "model.keras").get_weights(), trained):
        np.testing.assert_array_equal(back, original.astype(np.float16).astype(np.float32))
    capsys.readouterr()
    assert main(["eval", str(run), "--data-dir", str(small_cifar10), "--json"]) == 0
    zoo_accuracy = json.loads(capsys.readouterr().out)["accuracy"]
    reference_file = tmp_path / "runs" / "reference_lenet5.json"
    reference = json.loads(reference_file.read_text())
    assert reference["data"]["train"] == 300 and reference["recipe"]["lr"] == 0.1 and reference["recipe"]["batch"] == 256
    assert 0 <= reference["test_accuracy"] <= 1 and reference["images_per_second"] > 0 and len(reference["history"]) == 2
    # It kept each test image's prediction, in zoo eval's order: the two runs pair image by image.
    assert reference["test_labels"] == load_test_images(small_cifar10, (32, 32))[0].labels.tolist()
    difference, error = paired.main([str(run), str(reference_file), "--data-dir", str(small_cifar10)])
    assert difference == pytest.approx(100 * (reference["test_accuracy"] - zoo_accuracy)) and error > 0
    reference["test_labels"].reverse()  # other images, or another order: no pairing
    (tmp_path / "shuffled.json").write_text(json.dumps(reference))
    with pytest.raises(SystemExit, match="were not tested on the same images in the same order"):
        paired.main([str(run), str(tmp_path / "shuffled.json"), "--data-dir", str(small_cifar10)])


@pytest.mark.memory_heavy
@pytest.mark.slow
@needs_torch
def test_at_the_deadline_running_jobs_stop_and_what_they_saved_comes_back(packed, lease_env, tmp_path, monkeypatch, capsys):
    # A minute: on a 2-core AVX2-only EPYC beside the other test process, zoo's job took 30 s to start and end
    # its first epoch (the reference trains beside it), so half a minute stopped it before its first backup.
    out = session(
        lease_env, "run", "--out", tmp_path / "out", "--pack", packed, "--work", tmp_path / "work", "--epochs", 5000, "--minutes", 1, "--smoke-images", 0,
        "--recipes", "lenet5_cifar10", "--references", "lenet5", "--limit", 400, "--backup-every", 2, "--set", "data.validation_size=100",
    )
    assert '"lenet5_cifar10": "stopped at the deadline after ' in out and '"reference_lenet5": "stopped at the deadline after ' in out
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    gpu_session.main(["unpack", str(tmp_path / "out"), "--into", str(tmp_path / "runs")])
    run = tmp_path / "runs" / "lenet5_cifar10"
    assert (run / "model.keras").exists() and not (run / "results.json").exists()
    assert json.loads((run / "state.json").read_text())["epoch"] >= 2
    # Stopped by its SIGTERM, not killed 30 s later (under JAX the signal was often lost: zoo.interrupts).
    assert "zoo train: terminated (SIGTERM)" in (tmp_path / "runs" / "lenet5_cifar10.log").read_text()
    # The reference tested what it had trained and says so: its figures are not those of 5000 epochs.
    reference = json.loads((tmp_path / "runs" / "reference_lenet5.json").read_text())
    assert reference["stopped"] == f"by SIGTERM after {reference['epochs_trained']} of 5000 epochs" and reference["epochs_trained"] >= 1
    assert len(reference["history"]) == reference["epochs_trained"] and len(reference["test_predictions"]) == 500
    assert f"reference_lenet5.json: lenet5 test {reference['test_accuracy']:.4f}" in capsys.readouterr().out
    paired.main([str(tmp_path / "runs" / "reference_lenet5.json")] * 2 + ["--data-dir", str(tmp_path)])
    assert f"stopped {reference['stopped']}, with its schedule not run out" in capsys.readouterr().out


def test_run_without_a_pack_says_what_to_do_before_any_work(tmp_path):
    with pytest.raises(SystemExit, match=r"No images.npz in .*: run `gpu_session.py pack` here first"):
        gpu_session.main(["run", "--out", str(tmp_path / "out"), "--pack", str(tmp_path / "nothing"), "--work", str(tmp_path / "work")])
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_wheels_for_another_python_are_refused_in_one_line_before_any_work(packed, tmp_path):
    pack = tmp_path / "pack"
    (pack / "wheels").mkdir(parents=True)
    (pack / gpu_session.DATA_FILE).symlink_to(packed / gpu_session.DATA_FILE)
    other = f"cp{sys.version_info.major}{sys.version_info.minor + 1}"
    (pack / "wheels" / f"optree-0.17.0-{other}-{other}-manylinux_2_17_x86_64.whl").write_bytes(b"")
    (pack / "wheels" / "keras-3.15.1-py3-none-any.whl").write_bytes(b"")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    with pytest.raises(SystemExit, match=rf"packed wheels do not fit this Python {re.escape(here)} .*: optree-0.17.0-{other}-.*\.whl\. Pack again for it: gpu_session.py pack --python-version {re.escape(here)}"):
        gpu_session.main(["run", "--out", str(tmp_path / "out"), "--pack", str(pack), "--work", str(tmp_path / "work")])
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_a_job_failing_in_the_smoke_pass_stops_the_session_before_any_training(packed, lease_env, tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_session.py"), "run", "--out", str(tmp_path / "out"), "--pack", str(packed), "--work", str(tmp_path / "work"),
         "--recipes", "lenet5_cifar10", "--references", "--smoke-images", "64", "--set", "data.image_size=[8, 8]"],
        capture_output=True, text=True, env=lease_env, timeout=300,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "smoke pass (64 images, 1 epoch, 1 jobs at once): FAILED: lenet5_cifar10 (exit " in done.stdout
    assert "--- lenet5_cifar10 (smoke_lenet5_cifar10.log):" in done.stdout and "Stopped after the smoke pass: nothing was trained." in done.stdout
    assert not list((tmp_path / "work").glob("call-*/runs/lenet5_cifar10*"))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["runs.tar.000"]  # the logs come back


def test_the_plan_gives_each_pair_equal_epochs_that_end_before_the_deadline_and_leaves_out_what_does_not_fit():
    groups = gpu_session.pairs(["vgg16_bn_cifar10", "vgg11_bn_cifar10"], ["vgg16_bn", "vgg11_bn"])
    assert groups == [("vgg16_bn", ["vgg16_bn_cifar10", "reference_vgg16_bn"]), ("vgg11_bn", ["vgg11_bn_cifar10", "reference_vgg11_bn"])]
    seconds = {"vgg16_bn_cifar10": 4.0, "reference_vgg16_bn": 3.0, "vgg11_bn_cifar10": 2.5, "reference_vgg11_bn": 2.0}
    startup = dict.fromkeys(seconds, 20.0)
    epochs, left_out = gpu_session.plan_epochs(groups, seconds, startup, 400, most=200, least=60, finish=30, safety=1.0)
    assert epochs == {"vgg16_bn_cifar10": 87, "reference_vgg16_bn": 87, "vgg11_bn_cifar10": 140, "reference_vgg11_bn": 140} and not left_out
    assert 20 + 87 * 4.0 + 30 <= 400 < 20 + 88 * 4.0 + 30
    epochs, _ = gpu_session.plan_epochs(groups, seconds, startup, 4000, most=200, least=60, finish=30)
    assert set(epochs.values()) == {200}
    epochs, left_out = gpu_session.plan_epochs(groups, {**seconds, "vgg16_bn_cifar10": 6.0}, startup, 400, most=200, least=60, finish=30)
    assert "vgg16_bn" not in {n.removesuffix("_cifar10").removeprefix("reference_") for n in epochs}
    assert left_out == {"vgg16_bn": "50 epochs fit before the deadline, fewer than --min-epochs 60"} and epochs["vgg11_bn_cifar10"] == 121
    epochs, left_out = gpu_session.plan_epochs(groups, {"vgg16_bn_cifar10": 4.0}, startup, 400, most=200, least=60)
    assert left_out["vgg16_bn"] == "no epoch time measured for reference_vgg16_bn" and "vgg11_bn" in left_out and not epochs


def test_unpack_refuses_a_folder_without_parts_or_a_target_in_use(tmp_path):
    with pytest.raises(SystemExit, match="No runs.tar.NNN parts in"):
        gpu_session.unpack(tmp_path, tmp_path / "runs")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mine.txt").write_text("x")
    (tmp_path / "runs.tar.000").write_bytes(b"")
    with pytest.raises(SystemExit, match="is not empty: unpack into a new folder"):
        gpu_session.unpack(tmp_path, tmp_path / "runs")
    assert (tmp_path / "runs" / "mine.txt").read_text() == "x"


@needs_torch
def test_the_reference_is_the_peers_network_whatever_the_zoo_recipe_sets(small_cifar10):
    import torch

    from torch_reference import load
    from zoo import recipe as recipes

    assert recipes.load("vgg11_bn_cifar10")["model"]["dropout"] == 0.0  # the zoo's recipe trains without it
    network, dataset = load("vgg11_bn", str(small_cifar10), limit=64, overrides=["data.validation_size=16"])
    rates = [m.p for m in network.modules() if isinstance(m, torch.nn.Dropout)]
    assert rates == [0.5, 0.5] and len(dataset.train.images) == 64  # pytorch-cifar-models' classifier: Dropout() twice


def test_the_references_signal_handlers_note_a_stop_while_it_trains_and_are_put_back_after():
    import signal

    from torch_reference import _stop_on_signals

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with _stop_on_signals() as stopped:
        os.kill(os.getpid(), signal.SIGTERM)  # noted, not the end of the process
        signal.raise_signal(signal.SIGINT)  # nor a KeyboardInterrupt
    assert stopped == ["SIGTERM", "SIGINT"]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


@needs_torch
def test_the_references_evaluation_keeps_each_images_prediction_and_averages_the_flipped_view_in():
    import contextlib

    import torch

    from torch_reference import evaluate

    class LeftPixel(torch.nn.Module):  # the class its top-left pixel's red names, as sure as its green says
        def forward(self, x):
            return x[:, 1, 0, 0, None] * torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 10).float()

    images = torch.zeros(5, 4, 4, 3, dtype=torch.uint8)
    images[:, 0, 0, :2] = torch.tensor([[3, 9], [1, 2], [4, 9], [1, 9], [5, 2]])  # (class, confidence) seen plain
    images[:, 0, 3, :2] = torch.tensor([[5, 2], [2, 9], [4, 9], [7, 2], [0, 9]])  # and in the flipped view
    labels = torch.tensor([3, 2, 4, 7, 0])
    accuracy, accuracy_tta, predictions = evaluate(LeftPixel(), images, labels, 2, contextlib.nullcontext)
    assert predictions == [3, 1, 4, 1, 5] and accuracy == pytest.approx(2 / 5)
    assert accuracy_tta == pytest.approx(4 / 5)  # the surer view wins: images 1 and 4 turn right, 3 stays wrong


def test_a_paired_difference_counts_the_images_only_one_side_gets_right():
    difference, error, disagree = paired.paired_difference([1, 1, 0, 0, 1], [1, 0, 1, 1, 1])
    assert difference == pytest.approx(20) and error == pytest.approx(100 * np.sqrt(3) / 5) and disagree == pytest.approx(60)


def test_released_weights_pair_with_themselves_and_a_model_of_other_classes_is_refused(small_cifar10, capsys):
    assert paired.main(["lenet5:cifar10", "lenet5:cifar10", "--data-dir", str(small_cifar10)]) == (0, 0)
    assert "(500 test images)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="are not the model.s"):  # MNIST's ten digits are not CIFAR-10's classes
        paired.main(["lenet5:cifar10", "lenet5:mnist", "--data-dir", str(small_cifar10)])


@needs_torch
def test_the_references_crop_and_flip_moves_real_images_as_a_padded_crop_and_flip_would(cifar10_dir):
    import torch

    from torch_reference import crop_and_flip

    images = np.stack([read_image(p, (32, 32)) for p in sorted((cifar10_dir / "test" / "cat").glob("00[0-3]?.jpg"))])
    out = crop_and_flip(torch.from_numpy(images), 4, torch.Generator().manual_seed(0)).numpy()
    assert out.dtype == np.uint8
    found = set()
    for i, image in enumerate(images):  # each output is one of the 9 x 9 crops of the padded image, flipped or not
        candidates = {(dy, dx, f) for dy in range(-4, 5) for dx in range(-4, 5) for f in (False, True)}
        matches = [c for c in candidates if np.array_equal(out[i], augment.apply(image[None], augment.Draw(np.array([[c[0]], [c[1]]]), np.array([c[2]]), None))[0])]
        assert matches, f"image {i} is no crop/flip of its input"
        found.add(matches[0])
    assert len(found) > len(images) // 2  # the draws differ between images


def test_train_speed_measures_the_zoo_train_path_with_a_recipe_option_beside_it(monkeypatch):
    """`train_speed.py --with optimizer.use_ema=true`: what an option costs per step, measured in turn with the plain path."""
    import argparse

    import train_speed

    args = argparse.Namespace(backends=["tensorflow"], jit=False, compile=False, with_=["optimizer.use_ema=true"])
    found = train_speed.configurations(args, bf16_cpu=False)
    plain, with_ema = [(spec, env) for label, spec, env in train_speed.chosen(found, ["zoo train"])]
    assert [label for label, _, _ in train_speed.chosen(found, ["zoo train"])] == [
        "zoo train (recipe, augmentation) Keras/tensorflow", "zoo train Keras/tensorflow with optimizer.use_ema=true"]
    assert plain[0] == with_ema[0] and "ZOO_BENCH_SET" not in plain[1]
    monkeypatch.setenv("ZOO_BENCH_SET", with_ema[1]["ZOO_BENCH_SET"])
    assert train_speed._overrides() == ["optimizer.use_ema=true"]  # what the worker's recipe gets


@pytest.mark.parametrize("tf_data", [True, False], ids=["tensorflow", "other backends"])
def test_the_benchmarks_in_memory_steps_run_whatever_keras_reads(tf_data, monkeypatch):
    """train_speed's Keras step and input_pipeline's in-memory fit, through a tf.data pipeline (TensorFlow) or as
    arrays (JAX, torch: `train_speed.py --backends jax torch`)."""
    import input_pipeline
    import train_speed
    from zoo import keras_input
    from zoo.data import Split

    monkeypatch.setattr(keras_input, "uses_tf_data", lambda: tf_data)
    monkeypatch.setenv("ZOO_BENCH_SET", "[]")
    assert train_speed.zoo_step("lenet5", "float32", batch=8, steps=3, pipeline=False)["images_per_second"] > 0
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 48).astype("int32"))
    assert input_pipeline.measure("lenet5", split, 16, 2, pipeline=False) > 0


def test_train_speed_with_lookahead_times_its_pulls_too(monkeypatch):
    """`--with optimizer.lookahead=true` times the step with the callback that pulls every 5 steps, as `zoo train` runs it."""
    import train_speed
    from zoo.callbacks import Lookahead

    pulls, pull = [], Lookahead.pull
    monkeypatch.setattr(Lookahead, "pull", lambda self, decay: (pulls.append(decay), pull(self, decay)))
    monkeypatch.setenv("ZOO_BENCH_SET", json.dumps(["optimizer.lookahead=true", "training.batch_norm_momentum=0.4"]))
    result = train_speed.zoo_step("lenet5", "float32", batch=8, steps=10, pipeline=True)
    assert result["images_per_second"] > 0 and len(pulls) == 4  # after steps 5 and 10, in the warm-up fit and the timed one
    monkeypatch.setenv("ZOO_BENCH_SET", "[]")
    train_speed.zoo_step("lenet5", "float32", batch=8, steps=10, pipeline=True)
    assert len(pulls) == 4
