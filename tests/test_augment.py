"""Augmentation on the device: the same pixels as on the host, under every backend, in batches and in `zoo train`."""

import os

import numpy as np
import pytest

from zoo import augment
from zoo.cli import main
from zoo.data import Batches, Split, read_image

from conftest import ROOT
from test_portability import run_in_backend
from test_training import finished, quick_args, weights_of, zoo_process

SETTINGS = [
    {"crop_padding": 4, "flip": True, "cutout": 0},  # the shipped recipes
    {"crop_padding": 4, "flip": True, "cutout": 16},  # cutout squares cross the borders
    {"crop_padding": 0, "flip": True, "cutout": 8},
    {"crop_padding": 2, "flip": False, "cutout": 0},
    {"crop_padding": 40, "flip": False, "cutout": 3},  # padding larger than the image
    {"crop_padding": 4, "flip": True, "cutout": 8, "padding_mode": "reflect"},
    {"crop_padding": 40, "flip": True, "cutout": 0, "padding_mode": "reflect"},
]

# Run by each backend in its own process: the device path against the host path, for single draws and for
# every batch of an epoch of `Batches` (the last one short), on real images.
SAME_PIXELS = """
import json, sys
import numpy as np
import keras
from zoo import augment
from zoo.data import Batches, Split
images, labels = np.load(sys.argv[1])["images"], np.load(sys.argv[1])["labels"]
settings = json.loads(sys.argv[2])
for setting in settings:
    for seed in range(3):
        d = augment.draw(len(images), 32, 32, np.random.default_rng(seed), **setting)
        device = augment.apply_on_device(keras.ops.convert_to_tensor(images), d)
        assert keras.backend.standardize_dtype(device.dtype) == "uint8", device.dtype
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(device), augment.apply(images, d), err_msg=str(setting))
    host, on_device = (Batches(Split(images, labels), 24, seed=5, augmentation=setting, epoch=3, one_hot=10, on_device=flag) for flag in (False, True))
    for index in range(len(host)):
        (a, a_labels), (b, b_labels) = host[index], on_device[index]
        assert not isinstance(b, np.ndarray)  # a device tensor
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(b), a)
        np.testing.assert_array_equal(b_labels, a_labels)
print("same pixels under", keras.backend.backend())
"""


@pytest.fixture(scope="module")
def real_images(cifar10_dir, tmp_path_factory):
    files = sorted((cifar10_dir / "test").glob("*/000[0-6].jpg"))  # 70 images, 7 per class
    images = np.stack([read_image(f, (32, 32)) for f in files])
    labels = np.array([sorted(p.name for p in (cifar10_dir / "test").iterdir()).index(f.parent.name) for f in files], "int32")
    path = tmp_path_factory.mktemp("images") / "images.npz"
    np.savez(path, images=images, labels=labels)
    return path


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_device_augmentation_gives_the_host_pixels_bit_for_bit(backend, real_images):
    import json

    code = f"import sys; sys.argv = ['', {str(real_images)!r}, {json.dumps(SETTINGS)!r}]; sys.path.insert(0, {str(ROOT)!r})\n" + SAME_PIXELS
    assert f"same pixels under {backend}" in run_in_backend(code, backend, JAX_PLATFORMS="cpu")


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_a_crop_is_numpys_padded_image_cropped_then_flipped(mode, real_images):
    """Against `np.pad` with the same mode, image by image: the crop reads the padded image at the drawn offset."""
    images = np.load(real_images)["images"]
    d = augment.draw(len(images), 32, 32, np.random.default_rng(8), crop_padding=4, flip=True, padding_mode=mode)
    assert {-4, 4} <= set(d.shift.ravel()) and d.reflect == (mode == "reflect")
    out = augment.apply(images, d)
    for image, got, (dy, dx), flipped in zip(images, out, d.shift.T, d.flipped):
        crop = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode=mode)[4 + dy : 36 + dy, 4 + dx : 36 + dx]
        np.testing.assert_array_equal(got, crop[:, ::-1] if flipped else crop)


def test_an_unknown_padding_mode_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="padding_mode must be one of constant, reflect. Received: padding_mode='edge'"):
        augment.draw(4, 8, 8, np.random.default_rng(0), padding_mode="edge")
    split = Split(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4, "int32"))
    with pytest.raises(ValueError, match="Received: padding_mode='symmetric'"):
        Batches(split, 2, augmentation={"crop_padding": 4, "padding_mode": "symmetric"})


def test_the_draw_keeps_the_random_stream_runs_always_had():
    """Crop offsets, then flips, then cutout corners, from one stream: runs from before the device path
    (and their resumes) see the same batches."""
    rng = np.random.default_rng(4)
    shift, flipped = rng.integers(-2, 3, size=(2, 16)), rng.random(16) < 0.5
    corner = np.stack([rng.integers(-3, 8 - 3, size=16), rng.integers(-3, 8 - 3, size=16)])
    d = augment.draw(16, 8, 8, np.random.default_rng(4), crop_padding=2, flip=True, cutout=6)
    for got, expected in ((d.shift, shift), (d.flipped, flipped), (d.corner, corner)):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.memory_heavy
@pytest.mark.slow
def test_a_jax_run_augmented_on_the_device_trains_the_same_weights_as_on_the_host(small_cifar10, tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    started = {  # both at once: each is mostly one core's start-up
        where: zoo_process([*quick_args(small_cifar10, tmp_path / where, epochs=2, limit=400), "--set", "augment.cutout=8", "--set", "augment.alternate_flip=true", "--augment-on", where], env)
        for where in ("host", "device")
    }
    runs = {where: finished(proc) for where, proc in started.items()}
    assert 'alternate_flip = true' in (tmp_path / "host" / "recipe.toml").read_text()
    assert "(augmented on the device)" in runs["device"] and "(augmented on the device)" not in runs["host"]
    for a, b in zip(weights_of(tmp_path / "host" / "model.keras"), weights_of(tmp_path / "device" / "model.keras")):
        np.testing.assert_array_equal(a, b)


def test_augment_on_device_with_a_strategy_or_an_unknown_place_is_refused_before_any_work(tmp_path, capsys):
    assert main(["train", "lenet5_cifar10", "--augment-on", "device", "--strategy", "mirrored", "--out", str(tmp_path / "run")]) == 2
    assert "augment_on='device' works on one device; with strategy='mirrored' batches are augmented on the host" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit):
        main(["train", "lenet5_cifar10", "--augment-on", "gpu"])
    assert "argument --augment-on: invalid choice: 'gpu'" in capsys.readouterr().err


def test_negative_settings_are_refused_by_batches_too():
    split = Split(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4, "int32"))
    with pytest.raises(ValueError, match="crop_padding and cutout must be >= 0 .* cutout=-1"):
        Batches(split, 2, augmentation={"crop_padding": 4, "flip": True, "cutout": -1}, on_device=True)
