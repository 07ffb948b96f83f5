"""airbench's starts: `training.whitening_init` (the first convolution whitens the training images' patches)
and `training.dirac_init` (later convolutions start as identities)."""

import numpy as np
import pytest

import keras
from zoo import recipe as recipes
from zoo import training
from zoo.data import load_dataset
from zoo.recipe import RecipeError
from zoo.initialisation import dirac_convs, patch_covariance, whitening_filters
from zoo.models import get_model


def test_patch_covariance_is_that_of_every_patch_in_the_kernels_order():
    inputs = np.random.default_rng(0).normal(size=(40, 12, 13, 3)).astype(np.float32)
    inputs[..., 1] += 0.5 * inputs[..., 0]  # correlated channels, so a wrong order shows
    patches = np.array([
        inputs[n, i:i + 5, j:j + 4, :].reshape(-1) for n in range(40) for i in range(12 - 4) for j in range(13 - 3)
    ])
    np.testing.assert_allclose(patch_covariance(inputs, (5, 4)), np.cov(patches, rowvar=False, bias=True), atol=1e-5)
    big = np.random.default_rng(1).normal(size=(30, 32, 32, 3)).astype(np.float32)  # several chunks of images
    whole = np.lib.stride_tricks.sliding_window_view(big, (11, 11), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3).reshape(-1, 363)
    np.testing.assert_allclose(patch_covariance(big, (11, 11)), np.cov(whole, rowvar=False, bias=True), atol=1e-5)


def test_whitening_filters_give_uncorrelated_unit_variance_outputs_in_pairs_of_both_signs():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(12, 12)) * np.geomspace(10, 0.1, 12)  # variances over four orders of magnitude
    covariance = mixing @ mixing.T
    filters = whitening_filters(covariance, (2, 2, 3, 32), epsilon=0)  # 12-dim patches: 12 pairs, 8 filters left
    assert filters.shape == (2, 2, 3, 24)
    flat = filters.reshape(12, 24)
    np.testing.assert_allclose(flat[:, 12:], -flat[:, :12])
    np.testing.assert_allclose(flat[:, :12].T @ covariance @ flat[:, :12], np.eye(12), atol=1e-6)
    few = whitening_filters(covariance, (2, 2, 3, 8), epsilon=0).reshape(12, 8)[:, :4]  # room for the 4 largest only
    np.testing.assert_allclose(np.linalg.norm(covariance @ few, axis=0) ** 2, np.sort(np.linalg.eigvalsh(covariance))[::-1][:4], rtol=1e-6)
    damped = whitening_filters(covariance, (2, 2, 3, 24), epsilon=1e-2).reshape(12, 24)[:, :12]
    variances = np.diag(damped.T @ covariance @ damped)
    assert variances[0] > 0.99 and variances[-1] < 0.5  # the floor (1% of the mean variance) damps the weakest directions


def test_dirac_filters_pass_their_own_input_channel_on_and_the_rest_keep_their_start():
    keras.utils.set_random_seed(0)
    model = get_model("vgg11_bn", input_shape=(32, 32, 3), num_classes=10)
    before = {layer.name: keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
    assert dirac_convs(model) == 7  # every convolution of VGG11 but the first
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("block1_conv1").kernel), before["block1_conv1"])
    for name in ("block2_conv1", "block3_conv2"):  # 64 -> 128 and 256 -> 256 channels
        conv = model.get_layer(name)
        inputs = np.random.default_rng(1).normal(size=(2, 6, 5, conv.kernel.shape[2])).astype(np.float32)
        outputs = keras.ops.convert_to_numpy(conv(inputs)) - keras.ops.convert_to_numpy(conv.bias)
        channels = min(conv.kernel.shape[2:])
        np.testing.assert_allclose(outputs[..., :channels], inputs[..., :channels], atol=1e-6)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(conv.kernel)[..., channels:], before[name][..., channels:])
    assert np.any(before["block2_conv1"][..., 64:])  # 64 of its 128 filters kept their (non-zero) random start


@pytest.mark.parametrize("key", ["whitening_init", "dirac_init"])
def test_the_starts_need_a_network_trained_from_scratch(key):
    assert recipes.load("lenet5_cifar10", [f"training.{key}=true"])["training"][key] is True
    assert recipes.load("lenet5_cifar10")["training"][key] is False
    with pytest.raises(RecipeError, match=rf'^--set training.{key}=true: .* needs model.weights = "none". Received: model.weights=\'cifar10\''):
        recipes.load("lenet5_cifar10", [f"training.{key}=true", "model.weights=cifar10"])


def test_freezing_the_whitening_needs_the_whitening():
    assert recipes.load("lenet5_cifar10", ["training.whitening_init=true", "training.freeze_whitening=true"])["training"]["freeze_whitening"]
    with pytest.raises(RecipeError, match=r"^--set training.freeze_whitening=true: .* needs training.whitening_init = true. Received: training.whitening_init=false$"):
        recipes.load("lenet5_cifar10", ["training.freeze_whitening=true"])


def test_a_run_starts_from_a_whitening_of_its_own_training_images_and_from_identities(small_cifar10, tmp_path, monkeypatch, capsys):
    """With `training.freeze_whitening` the whitened filters stay as they started while the rest trains."""
    recipe = recipes.load("lenet5_cifar10", [
        f"data.data_dir={recipes.toml_value(str(small_cifar10))}", "data.validation_size=0", "data.limit=300",
        "training.epochs=1", "training.tta_flip=false", "training.precision='float32'", "training.whitening_init=true",
        "training.dirac_init=true", "training.freeze_whitening=true",
    ])
    started, begin = {}, training.RunState.on_epoch_begin

    def record(self, epoch, logs=None):
        started.setdefault("kernel", keras.ops.convert_to_numpy(self.model.get_layer("block1_conv1").kernel))
        started.setdefault("second", keras.ops.convert_to_numpy(self.model.get_layer("block2_conv1").kernel))
        started.setdefault("seen", keras.Model(self.model.inputs, self.model.get_layer("block1_conv1").input))
        begin(self, epoch, logs)

    monkeypatch.setattr(training.RunState, "on_epoch_begin", record)
    training.train(recipe, tmp_path / "run", verbose=0)
    out = capsys.readouterr().out
    assert "6 filters of block1_conv1 whitened; 1 convolution started as identities" in out  # LeNet-5: 6 filters of 5x5x3 = 75 dims, 3 pairs
    identity = np.zeros((5, 5, 6, 6))
    identity[2, 2] = np.eye(6)  # 6 -> 16 channels, 5x5: its first 6 filters pass their own channel on
    np.testing.assert_array_equal(started["second"][..., :6], identity)
    images = load_dataset("cifar10", data_dir=str(small_cifar10), validation_size=0, seed=0, limit=300).train.images
    seen = np.asarray(started["seen"].predict(images, verbose=0), np.float32)
    flat = started["kernel"].reshape(75, 6)
    outputs = flat.T @ patch_covariance(seen, (5, 5)) @ flat  # every training image: the sample is all 300
    np.testing.assert_allclose(np.diag(outputs), 1.0, atol=0.01)
    np.testing.assert_allclose(outputs[:3, :3], np.eye(3), atol=0.01)
    assert "whitening_init = true" in (tmp_path / "run" / "recipe.toml").read_text()
    assert "dirac_init = true" in (tmp_path / "run" / "recipe.toml").read_text()
    trained = keras.saving.load_model(tmp_path / "run" / "model.keras")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(trained.get_layer("block1_conv1").kernel), started["kernel"])
    assert not np.allclose(keras.ops.convert_to_numpy(trained.get_layer("block2_conv1").kernel), started["second"])
    assert all(v.trainable for v in trained.get_layer("block1_conv1").weights)  # the file's layers train as any other
