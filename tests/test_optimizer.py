"""The recipe's optimizer: its learning-rate schedules step by step, the batch norms' faster biases, and
the moving average of the weights (`optimizer.use_ema`) in validation, checkpoints and resumed runs, and
airbench's lookahead (`optimizer.lookahead`) with its batch-norm momentum (`training.batch_norm_momentum`)."""

import csv
import json
import types

import numpy as np
import pytest

import keras
from zoo import lenet5
from zoo import recipe as recipes
from zoo import training
from zoo.data import load_dataset, one_hot
from zoo.optimizer import learning_rate, learning_rate_scales, make_optimizer

from test_portability import run_in_backend


def schedule_values(overrides, steps_per_epoch=10):
    recipe = recipes.load("lenet5_cifar10", ["training.epochs=5", "optimizer.learning_rate=0.4", *overrides])
    schedule = learning_rate(recipe, steps_per_epoch)
    return [float(schedule(step)) if callable(schedule) else schedule for step in range(51)]


def test_warmup_linear_rises_to_the_peak_then_falls_in_a_straight_line_to_its_final_fraction():
    values = schedule_values(["schedule.name=warmup_linear", "schedule.warmup_epochs=1"])
    np.testing.assert_allclose(values[:11], np.linspace(0, 0.4, 11), rtol=1e-6, atol=1e-7)  # 10 warm-up steps
    np.testing.assert_allclose(values[10:], np.linspace(0.4, 0, 41), rtol=1e-5, atol=1e-6)  # then linear to zero at step 50
    ends_higher = schedule_values(["schedule.name=warmup_linear", "schedule.warmup_epochs=0", "schedule.final_fraction=0.25"])
    np.testing.assert_allclose(ends_higher, np.linspace(0.4, 0.1, 51), rtol=1e-5)
    assert schedule_values(["schedule.name=constant"]) == [0.4] * 51


def test_warmup_cosine_is_unchanged():
    values = schedule_values(["schedule.warmup_epochs=1"])
    np.testing.assert_allclose(values[:11], np.linspace(0, 0.4, 11), rtol=1e-6, atol=1e-7)
    expected = 0.4 * 0.5 * (1 + np.cos(np.pi * np.arange(41) / 40))
    np.testing.assert_allclose(values[10:], expected, rtol=1e-5, atol=1e-6)


def test_batch_norm_biases_step_their_scale_times_further_and_nothing_else_changes():
    """One Nesterov SGD step (with decoupled weight decay) on the same batch, from the same start."""
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype("float32")
    labels = one_hot(np.arange(8) % 2, 2)
    recipe = recipes.load("lenet5_cifar10", ["schedule.name=constant", "optimizer.batch_norm_bias_lr_scale=4"])

    def deltas(scale):
        keras.utils.set_random_seed(0)
        model = lenet5(num_classes=2, batch_norm=True)
        before = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        scales = learning_rate_scales(model, scale)
        model.compile(optimizer=make_optimizer(recipe, 10, scales), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        model.train_on_batch(images, labels)
        return scales, {v.path: keras.ops.convert_to_numpy(v) - b for v, b in zip(model.trainable_variables, before)}

    scales, faster = deltas(recipe["optimizer"]["batch_norm_bias_lr_scale"])
    plain = deltas(1.0)[1]
    assert sorted(scales) == ["block1_bn1/beta", "block2_bn1/beta"] and set(scales.values()) == {4.0}
    for path, delta in plain.items():
        assert np.any(delta), path
        factor = 4.0 if path.endswith("/beta") else 1.0
        np.testing.assert_allclose(faster[path], factor * delta, rtol=1e-4, atol=1e-7, err_msg=path)
    assert learning_rate_scales(lenet5(num_classes=2, batch_norm=True), 4.0, ["block1_bn1/beta", "fc1/kernel"], 0.5) == {
        "block1_bn1/beta": 2.0, "block2_bn1/beta": 4.0, "fc1/kernel": 0.5,
    }


@pytest.mark.parametrize("override, message", [
    ("optimizer.ema_momentum=1.0", r"optimizer.ema_momentum must be in \(0, 1\)"),
    ("optimizer.use_ema=1", r"optimizer.use_ema must be of type bool"),
    ("optimizer.batch_norm_bias_lr_scale=0", r"optimizer.batch_norm_bias_lr_scale must be > 0"),
    ("optimizer.lookahead=1", r"optimizer.lookahead must be of type bool"),
    ("training.batch_norm_momentum=1.0", r"training.batch_norm_momentum must be in \[0, 1\)"),
])
def test_bad_optimizer_settings_name_the_key(override, message):
    with pytest.raises(recipes.RecipeError, match=message):
        recipes.load("lenet5_cifar10", [override])


def ema_recipe(data_dir, epochs=3):
    return recipes.load("lenet5_cifar10", [
        f"data.data_dir={recipes.toml_value(str(data_dir))}", "data.validation_size=500", "data.limit=1000",
        f"training.epochs={epochs}", "training.tta_flip=false", "training.precision='float32'",
        "optimizer.use_ema=true", "optimizer.ema_momentum=0.9",
    ])


@pytest.mark.slow
def test_validation_and_the_checkpoint_use_the_average_and_a_resumed_run_matches_an_unbroken_one(small_cifar10, tmp_path, monkeypatch):
    recipe = ema_recipe(small_cifar10)
    seen, end_of_epoch = {}, training.RunState.on_epoch_end

    def record(self, epoch, logs=None):  # after the average was swapped in, before the backup
        optimizer = self.model.optimizer
        seen[epoch] = {
            "model": self.model.get_weights(), "averaged": [v.numpy() for v in self.model.trainable_variables],
            "trained": [v.numpy() for v in optimizer._model_variables_moving_average],  # swapped out for now
        }
        end_of_epoch(self, epoch, logs)

    monkeypatch.setattr(training.RunState, "on_epoch_end", record)
    unbroken = training.train(recipe, tmp_path / "unbroken", verbose=0)
    monkeypatch.undo()
    history = list(csv.DictReader(open(tmp_path / "unbroken" / "history.csv")))
    best = max(range(3), key=lambda e: (float(history[e]["val_accuracy"]), -float(history[e]["val_loss"])))
    checkpoint = keras.saving.load_model(tmp_path / "unbroken" / "model.keras")
    for a, b in zip(checkpoint.get_weights(), seen[best]["model"]):
        np.testing.assert_array_equal(a, b)
    # At each epoch's end the model holds the average, not the weights the steps trained (after the
    # last epoch both are the average: Keras ends a fit with it) ...
    for epoch in (0, 1):
        assert all(not np.array_equal(a, b) for a, b in zip(seen[epoch]["averaged"], seen[epoch]["trained"]))
    # ... and it is what validation measured: its accuracy on the validation images is the logged one.
    data = load_dataset(data_dir=small_cifar10, validation_size=500, limit=1000, seed=0)
    checkpoint.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    _, accuracy = checkpoint.evaluate(data.val.images, one_hot(data.val.labels, 10), batch_size=128, verbose=0)
    assert accuracy == pytest.approx(float(history[best]["val_accuracy"]), abs=1e-6)

    resumed = stopped_in_epoch_2_then_resumed(recipe, tmp_path / "resumed", monkeypatch)
    assert resumed["test_accuracy"] == unbroken["test_accuracy"]
    for a, b in zip(weights(tmp_path / "resumed"), weights(tmp_path / "unbroken")):
        np.testing.assert_array_equal(a, b)
    assert json.loads((tmp_path / "resumed" / "results.json").read_text())["val_accuracy"] == unbroken["val_accuracy"]


def stopped_in_epoch_2_then_resumed(recipe, run_dir, monkeypatch):
    """The results of `recipe` trained into `run_dir`, stopped (Ctrl-C) at epoch 2's end before its backup, then run again."""
    end_of_epoch = training.RunState.on_epoch_end

    def stop_in_the_second_epoch(self, epoch, logs=None):  # before its backup: it resumes from epoch 1
        end_of_epoch(self, epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.RunState, "on_epoch_end", stop_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        training.train(recipe, run_dir, verbose=0)
    monkeypatch.undo()
    resumed = training.train(recipe, run_dir, verbose=0)
    assert resumed["resumed_from_epoch"] == [1]
    return resumed


def weights(run_dir):
    return keras.saving.load_model(run_dir / "model.keras").get_weights()


# Each backend's `fit` with the callback against its own `train_on_batch` steps and the pulls done by hand:
# under JAX the trainer holds the variables' values between syncs, so a pull it did not see would be lost.
LOOKAHEAD_AGAINST_BY_HAND = """
import numpy as np, keras
from zoo.callbacks import Lookahead
rng = np.random.default_rng(0)
x, y = rng.normal(size=(24, 4)).astype("float32"), rng.normal(size=(24, 3)).astype("float32")

def model():
    keras.utils.set_random_seed(0)
    # No bias before the batch norm: it would get no gradient and stay at its start (0) give or take rounding.
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, use_bias=False), keras.layers.BatchNormalization(momentum=0.5)])
    m.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    return m

def floats(m):
    return [v for v in m.variables if "float" in str(v.dtype)]  # kernel, gamma, beta, moving mean and variance

pulled, plain = model(), model()
pulled.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[Lookahead(6, 2, every=4, peak_decay=0.5)])
plain.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
by_hand = model()
slow = [keras.ops.convert_to_numpy(v) for v in floats(by_hand)]
for step in range(1, 13):  # 6 steps an epoch: pulls after steps 4, 6 (an epoch's end), 8 and 12
    i = (step - 1) % 6
    by_hand.train_on_batch(x[4 * i:4 * i + 4], y[4 * i:4 * i + 4])
    if step % 4 == 0 or step % 6 == 0:
        decay = 0.5 * (step / 12) ** 3
        slow = [s + (1 - decay) * (keras.ops.convert_to_numpy(v) - s) for s, v in zip(slow, floats(by_hand))]
        for v, s in zip(floats(by_hand), slow):
            v.assign(s)
for a, b, c in zip(floats(pulled), floats(by_hand), floats(plain)):
    a, b, c = (keras.ops.convert_to_numpy(v) for v in (a, b, c))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a, c)  # the pulls changed every variable, the moving statistics too
print(keras.backend.backend())
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_lookahead_pulls_weights_and_statistics_to_a_slow_copy_on_its_schedule_in_every_backend(backend):
    assert run_in_backend(LOOKAHEAD_AGAINST_BY_HAND, backend).split() == [backend]


def test_lookahead_with_a_multi_worker_strategy_is_refused_before_any_work():
    recipe = recipes.load("lenet5_cifar10", ["optimizer.lookahead=true"])
    with pytest.raises(ValueError, match=r"optimizer.lookahead is not supported with --strategy multi_worker: set it to false"):
        training._check_before_work(recipe, types.SimpleNamespace(strategy=object()))


@pytest.mark.slow
def test_a_lookahead_run_with_fast_batch_norm_statistics_resumes_exactly_and_saves_plain_keras(small_cifar10, tmp_path, monkeypatch):
    recipe = recipes.load("lenet5_cifar10", [
        f"data.data_dir={recipes.toml_value(str(small_cifar10))}", "data.validation_size=0", "data.limit=600",
        "training.epochs=3", "training.tta_flip=false", "training.precision='float32'", "model.batch_norm=true",
        "optimizer.lookahead=true", "training.batch_norm_momentum=0.4",
    ])
    unbroken = training.train(recipe, tmp_path / "unbroken", verbose=0)
    resumed = stopped_in_epoch_2_then_resumed(recipe, tmp_path / "resumed", monkeypatch)
    assert resumed["test_accuracy"] == unbroken["test_accuracy"]
    for a, b in zip(weights(tmp_path / "resumed"), weights(tmp_path / "unbroken")):
        np.testing.assert_array_equal(a, b)
    model = keras.saving.load_model(tmp_path / "unbroken" / "model.keras", safe_mode=True)
    assert [layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)] == [0.4, 0.4]
