"""Frozen batch norm scales (`training.freeze_batch_norm_scales`): every batch norm's `gamma` stays 1 while the
rest trains, in every backend, through a fine-tune's phases too; the saved model holds Keras' plain batch norms."""

import types

import numpy as np
import pytest

import keras
from zoo import recipe as recipes
from zoo import training

from test_portability import run_in_backend, run_python

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
    def run(name, *overrides):
        recipe = recipes.load("lenet5_cifar10", [
            f"data.data_dir={recipes.toml_value(str(small_cifar10))}", "data.validation_size=0", "data.limit=600",
            "training.epochs=1", "training.tta_flip=false", "training.precision='float32'", "model.batch_norm=true", *overrides,
        ])
        training.train(recipe, tmp_path / name, verbose=0)
        model = keras.saving.load_model(tmp_path / name / "model.keras")
        batch_norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        return [layer.gamma.numpy() for layer in batch_norms], [layer.beta.numpy() for layer in batch_norms]

    scales, biases = run("frozen", "training.freeze_batch_norm_scales=true")
    assert len(scales) == 2 and all(np.array_equal(gamma, np.ones_like(gamma)) for gamma in scales)
    assert all(np.abs(beta).min() > 0 for beta in biases)
    assert not any(np.array_equal(gamma, np.ones_like(gamma)) for gamma in run("plain")[0])
    # From that file, the backbone frozen for one epoch, then everything (its batch norms too) for one more.
    start = recipes.toml_value(str(tmp_path / "frozen" / "model.keras"))
    tuned_scales, tuned_biases = run(
        "tuned", "training.freeze_batch_norm_scales=true", f"model.weights={start}", "training.epochs=2",
        "finetune.frozen_epochs=1", "finetune.batch_norm_frozen=false",
    )
    assert all(np.array_equal(gamma, np.ones_like(gamma)) for gamma in tuned_scales)
    assert not any(np.array_equal(a, b) for a, b in zip(tuned_biases, biases))
    loaded = run_python(f"""
        import keras
        m = keras.saving.load_model({str(tmp_path / "tuned" / "model.keras")!r}, safe_mode=True)
        print(sorted({{type(layer).__module__.split(".")[0] for layer in m.layers}}), sum(type(layer) is keras.layers.BatchNormalization for layer in m.layers))
    """)
    assert loaded.split() == ["['keras']", "2"]
