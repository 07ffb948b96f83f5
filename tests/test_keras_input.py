"""zoo.keras_input: under TensorFlow, the same batches in the same order as Keras' own adapters, without tf.data's autotuning."""

import keras
import numpy as np
import pytest

from zoo import keras_input, lenet5
from zoo.data import Batches, EpochSync, Split, one_hot
from zoo.evaluation import probabilities

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data pipelines are TensorFlow's")

RNG = np.random.default_rng(0)
SPLIT = Split(RNG.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8), RNG.integers(0, 10, 200).astype("int32"))
VALIDATION = (SPLIT.images[:70], one_hot(SPLIT.labels[:70], 10))  # 70: a last batch smaller than the others


def test_every_pipeline_handed_to_keras_has_autotuning_off():
    batches = Batches(SPLIT, 64, one_hot=10)
    train = keras_input.batches_input(batches)
    validation, batch = keras_input.arrays_input(VALIDATION, 32)
    assert batch is None and not train.options().autotune.enabled and not validation.options().autotune.enabled
    assert int(train.cardinality()) == len(batches) == 4 and int(validation.cardinality()) == 3  # Keras knows the steps
    on_device = Batches(SPLIT, 64, one_hot=10, on_device=True)  # zoo train --augment-on device: tensors already
    assert on_device.on_device and keras_input.batches_input(on_device) is on_device


def _train(through_keras_input, monkeypatch):
    monkeypatch.setattr(keras_input, "uses_tf_data", lambda: through_keras_input)
    keras.utils.set_random_seed(0)
    model = lenet5(num_classes=10)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=keras.losses.CategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    batches = Batches(SPLIT, 64, seed=1, augmentation={"crop_padding": 4, "flip": True}, one_hot=10, threads=2, epoch=1)
    validation, batch = keras_input.arrays_input(VALIDATION, 32)
    history = model.fit(
        keras_input.batches_input(batches), shuffle=False, validation_data=validation, validation_batch_size=batch,
        initial_epoch=1, epochs=3, callbacks=[EpochSync(batches)], verbose=0,
    )
    return model, history.history


def test_training_and_predictions_are_the_same_as_through_keras_own_adapters(monkeypatch):
    """Same weights to the bit after a resumed run's two epochs (augmented batches from two threads, validation
    in batches of 32), and the same probabilities: only what runs around the steps changes."""
    ours, our_history = _train(True, monkeypatch)
    keras_own, keras_history = _train(False, monkeypatch)
    assert our_history == keras_history and len(our_history["val_loss"]) == 2
    assert all(np.array_equal(a, b) for a, b in zip(ours.get_weights(), keras_own.get_weights()))
    mirrored = probabilities(ours, SPLIT.images, tta_flip=True, batch_size=64)
    monkeypatch.setattr(keras_input, "uses_tf_data", lambda: True)
    assert np.array_equal(probabilities(ours, SPLIT.images, tta_flip=True, batch_size=64), mirrored)


def test_in_memory_fits_train_the_same_through_either_path(monkeypatch):
    """`fit_arrays`: a tf.data pipeline under TensorFlow, the arrays and batch size elsewhere; the same weights."""
    weights = []
    for through_keras_input in (True, False):
        monkeypatch.setattr(keras_input, "uses_tf_data", lambda: through_keras_input)
        keras.utils.set_random_seed(0)
        model = lenet5(num_classes=10)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        arguments = keras_input.fit_arrays(*VALIDATION, 32)
        assert (arguments["batch_size"] is None) == through_keras_input and ("y" in arguments) != through_keras_input
        model.fit(**arguments, shuffle=False, epochs=1, verbose=0)
        weights.append(model.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*weights))


def test_whitening_and_feature_maps_read_through_the_same_pipelines(monkeypatch):
    """zoo's other `predict` calls (the whitened first convolution, `zoo viz`'s feature maps) hand Keras a
    pipeline without autotuning too, and get the same numbers as through Keras' own adapter."""
    import tensorflow as tf

    from zoo.initialisation import first_conv, whiten_first_conv
    from zoo.viz import feature_maps

    handed = []
    predict = keras.Model.predict
    monkeypatch.setattr(keras.Model, "predict", lambda self, x, **kw: handed.append(x) or predict(self, x, **kw))
    model = lenet5(num_classes=10)

    def run(through_keras_input):
        monkeypatch.setattr(keras_input, "uses_tf_data", lambda: through_keras_input)
        whiten_first_conv(model, SPLIT.images, seed=0, sample=150)
        return keras.ops.convert_to_numpy(first_conv(model).kernel), feature_maps(model, SPLIT.images[0])

    (kernel, maps), (keras_kernel, keras_maps) = run(True), run(False)
    assert [isinstance(x, tf.data.Dataset) for x in handed] == [True, True, False, False]
    assert not any(x.options().autotune.enabled for x in handed[:2])
    assert np.array_equal(kernel, keras_kernel)
    assert [name for name, _ in maps] == [name for name, _ in keras_maps] and all(np.array_equal(a, b) for (_, a), (_, b) in zip(maps, keras_maps))
