"""Ghost batch norm (`training.ghost_batch_size`): while training, each batch norm normalizes groups of
images by the group's statistics; the saved model holds Keras' plain batch norms."""

import types

import numpy as np
import pytest

import keras
from zoo import recipe as recipes
from zoo import training

from test_portability import run_in_backend, run_python

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
    def run(name, *overrides):
        recipe = recipes.load("lenet5_cifar10", [
            f"data.data_dir={recipes.toml_value(str(small_cifar10))}", "data.validation_size=0", "data.limit=600",
            "training.epochs=1", "training.tta_flip=false", "training.precision='float32'", "model.batch_norm=true", *overrides,
        ])
        training.train(recipe, tmp_path / name, verbose=0)
        return keras.saving.load_model(tmp_path / name / "model.keras").get_weights()

    for a, b in zip(run("ghost", "training.ghost_batch_size=32"), run("plain")):
        assert a.shape == b.shape and not np.array_equal(a, b)  # every variable, the moving statistics too
    loaded = run_python(f"""
        import keras
        m = keras.saving.load_model({str(tmp_path / "ghost" / "model.keras")!r}, safe_mode=True)
        print(sorted({{type(layer).__module__.split(".")[0] for layer in m.layers}}), sum(type(layer) is keras.layers.BatchNormalization for layer in m.layers))
    """)
    assert loaded.split() == ["['keras']", "2"]
