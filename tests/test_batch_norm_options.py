"""Batch norm options of a training run, each changing the training step only, so the saved model holds Keras'
plain batch norms: ghost batch norm (`training.ghost_batch_size`: while training, each batch norm normalizes
groups of images by the group's statistics) and frozen scales (`training.freeze_batch_norm_scales`: every
`gamma` stays 1 while the rest trains, in every backend, through a fine-tune's phases too)."""

import types

import numpy as np
import pytest

import keras
from zoo import recipe as recipes
from zoo import training

from test_portability import run_in_backend, run_python


def train_lenet5_bn(data_dir, run_dir, *overrides):
    """LeNet-5 with batch norm, one float32 epoch on 600 images, into `run_dir`: its saved model and batch norms."""
    recipe = recipes.load("lenet5_cifar10", [
        f"data.data_dir={recipes.toml_value(str(data_dir))}", "data.validation_size=0", "data.limit=600",
        "training.epochs=1", "training.tta_flip=false", "training.precision='float32'", "model.batch_norm=true", *overrides,
    ])
    training.train(recipe, run_dir, verbose=0)
    model = keras.saving.load_model(run_dir / "model.keras")
    return model, [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def assert_plain_keras_without_zoo(path, batch_norms):
    """A process without zoo loads `path` with safe_mode=True: only Keras layers, `batch_norms` plain batch norms."""
    loaded = run_python(f"""
        import keras
        m = keras.saving.load_model({str(path)!r}, safe_mode=True)
        print(sorted({{type(layer).__module__.split(".")[0] for layer in m.layers}}), sum(type(layer) is keras.layers.BatchNormalization for layer in m.layers))
    """)
    assert loaded.split() == ["['keras']", str(batch_norms)]


# Groups of 4 in a batch of 10 (the step's batch is 12: a short last batch) against a plain batch norm
# trained on each group alone, in the backend's own ops; the moving statistics follow the groups' mean,
# and inference is the plain layer's.
GROUPS_AGAINST_PLAIN = """
import numpy as np, keras
from zoo.ghost_batch_norm import use_ghost_batches
x = np.random.default_rng(0).normal(2, 3, size=(10, 4, 4, 3)).astype("float32")
groups = ((0, 4), (4, 8), (8, 10))

def model():
    inputs = keras.Input((4, 4, 3))
    m = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.5)(inputs))
    m.layers[1].gamma.assign([1.0, 2.0, 3.0])
    m.layers[1].beta.assign([0.0, 1.0, -1.0])
    return m

numpy = keras.ops.convert_to_numpy
ghost, plain = model(), model()
assert use_ghost_batches(ghost, 4, 12) == 1
np.testing.assert_allclose(numpy(ghost(x, training=True)), np.concatenate([numpy(model()(x[a:b], training=True)) for a, b in groups]), atol=1e-5)
mean = np.mean([x[a:b].mean(axis=(0, 1, 2)) for a, b in groups], axis=0)
variance = np.mean([x[a:b].var(axis=(0, 1, 2)) for a, b in groups], axis=0)
np.testing.assert_allclose(numpy(ghost.layers[1].moving_mean), 0.5 * mean, rtol=1e-5)
np.testing.assert_allclose(numpy(ghost.layers[1].moving_variance), 0.5 + 0.5 * variance, rtol=1e-5)
for v, w in zip(plain.variables, ghost.variables):
    v.assign(w)
np.testing.assert_array_equal(numpy(ghost(x)), numpy(plain(x)))
assert not np.allclose(numpy(ghost(x, training=True)), numpy(plain(x, training=True)), atol=1e-3)  # the whole batch's statistics differ
print(keras.backend.backend())
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_each_group_is_normalized_by_its_own_statistics_in_every_backend(backend):
    assert run_in_backend(GROUPS_AGAINST_PLAIN, backend).split() == [backend]


@pytest.mark.parametrize("overrides, error, message", [
    (["training.ghost_batch_size=1"], recipes.RecipeError, r"training.ghost_batch_size must be 0 \(off\) or >= 2. Received: training.ghost_batch_size=1"),
    (["training.ghost_batch_size=128", "model.batch_norm=true"], ValueError, r"training.ghost_batch_size must be below data.batch_size \(128\)"),
    (["training.ghost_batch_size=32", "model.batch_norm=false"], ValueError, r"lenet5 has no batch norm to group"),
])
def test_bad_ghost_batch_sizes_are_refused_before_any_work(overrides, error, message):
    with pytest.raises(error, match=message):
        training._check_before_work(recipes.load("lenet5_cifar10", overrides), types.SimpleNamespace(strategy=None))


@pytest.mark.slow
def test_a_ghost_batch_norm_run_trains_differently_and_saves_plain_keras(small_cifar10, tmp_path):
    ghost, plain = (train_lenet5_bn(small_cifar10, tmp_path / name, *overrides)[0] for name, overrides in (
        ("ghost", ["training.ghost_batch_size=32"]), ("plain", [])))
    for a, b in zip(ghost.get_weights(), plain.get_weights()):
        assert a.shape == b.shape and not np.array_equal(a, b)  # every variable, the moving statistics too
    assert_plain_keras_without_zoo(tmp_path / "ghost" / "model.keras", 2)


# A few SGD steps on a convolution, a batch norm and a head: the scale stays exactly 1, the bias and the
# kernels move. Making the layer trainable again (a fine-tune's second phase) frees the scale: the trainer
# freezes it anew after that.
STEPS_WITH_FROZEN_SCALES = """
import numpy as np, keras
from zoo.training import freeze_batch_norm_scales
rng = np.random.default_rng(0)
x, y = rng.normal(size=(16, 6, 6, 3)).astype("float32"), rng.integers(0, 2, 16)
inputs = keras.Input((6, 6, 3))
h = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3, use_bias=False)(inputs))
model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h)))
bn = model.layers[2]
assert freeze_batch_norm_scales(model) == 1 and bn.gamma.path not in [v.path for v in model.trainable_variables]
kernel = keras.ops.convert_to_numpy(model.layers[1].kernel)
model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, y, batch_size=8, epochs=2, verbose=0)
np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.gamma), np.ones(4))
assert np.abs(keras.ops.convert_to_numpy(bn.beta)).min() > 0 and not np.allclose(keras.ops.convert_to_numpy(model.layers[1].kernel), kernel)
bn.trainable = False
bn.trainable = True
assert bn.gamma.trainable
print(keras.backend.backend())
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_the_scales_stay_one_while_the_rest_trains_in_every_backend(backend):
    assert run_in_backend(STEPS_WITH_FROZEN_SCALES, backend).split() == [backend]


def test_a_model_without_batch_norm_is_refused_before_any_work():
    recipe = recipes.load("lenet5_cifar10", ["training.freeze_batch_norm_scales=true", "model.batch_norm=false"])
    with pytest.raises(ValueError, match=r"training.freeze_batch_norm_scales = true: lenet5 has no batch norm with a scale to freeze"):
        training._check_before_work(recipe, types.SimpleNamespace(strategy=None))


@pytest.mark.slow
def test_a_run_and_its_fine_tune_keep_the_scales_at_one_and_save_plain_keras(small_cifar10, tmp_path):
    def scales_and_biases(name, *overrides):
        batch_norms = train_lenet5_bn(small_cifar10, tmp_path / name, *overrides)[1]
        return [layer.gamma.numpy() for layer in batch_norms], [layer.beta.numpy() for layer in batch_norms]

    scales, biases = scales_and_biases("frozen", "training.freeze_batch_norm_scales=true")
    assert len(scales) == 2 and all(np.array_equal(gamma, np.ones_like(gamma)) for gamma in scales)
    assert all(np.abs(beta).min() > 0 for beta in biases)
    assert not any(np.array_equal(gamma, np.ones_like(gamma)) for gamma in scales_and_biases("plain")[0])
    # From that file, the backbone frozen for one epoch, then everything (its batch norms too) for one more.
    start = recipes.toml_value(str(tmp_path / "frozen" / "model.keras"))
    tuned_scales, tuned_biases = scales_and_biases(
        "tuned", "training.freeze_batch_norm_scales=true", f"model.weights={start}", "training.epochs=2",
        "finetune.frozen_epochs=1", "finetune.batch_norm_frozen=false",
    )
    assert all(np.array_equal(gamma, np.ones_like(gamma)) for gamma in tuned_scales)
    assert not any(np.array_equal(a, b) for a, b in zip(tuned_biases, biases))
    assert_plain_keras_without_zoo(tmp_path / "tuned" / "model.keras", 2)
