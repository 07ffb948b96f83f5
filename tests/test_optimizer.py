"""The recipe's optimizer: its learning-rate schedules step by step, the batch norms' faster biases, and
the moving average of the weights (`optimizer.use_ema`) in validation, checkpoints and resumed runs."""

import csv
import json

import numpy as np
import pytest

import keras
from zoo import lenet5
from zoo import recipe as recipes
from zoo import training
from zoo.data import load_dataset, one_hot
from zoo.optimizer import learning_rate, learning_rate_scales, make_optimizer


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

    def stop_in_the_second_epoch(self, epoch, logs=None):  # before its backup: it resumes from epoch 1
        end_of_epoch(self, epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.RunState, "on_epoch_end", stop_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        training.train(recipe, tmp_path / "resumed", verbose=0)
    monkeypatch.undo()
    resumed = training.train(recipe, tmp_path / "resumed", verbose=0)
    assert resumed["resumed_from_epoch"] == [1] and resumed["test_accuracy"] == unbroken["test_accuracy"]
    for a, b in zip(weights(tmp_path / "resumed"), weights(tmp_path / "unbroken")):
        np.testing.assert_array_equal(a, b)
    assert json.loads((tmp_path / "resumed" / "results.json").read_text())["val_accuracy"] == unbroken["val_accuracy"]


def weights(run_dir):
    return keras.saving.load_model(run_dir / "model.keras").get_weights()
