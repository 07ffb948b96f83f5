"""The training loop of multi-worker runs (tf.distribute.MultiWorkerMirroredStrategy).

Keras 3's `model.fit` fails under that strategy once there are two workers (keras-team/keras#20585:
it reduces the scalar step outputs along axis 0, and its symbolic build reduces a tuple of
per-replica batches). This loop does what `fit` would: it drives the same callbacks (checkpoint,
CSV log, backup and resume, NaN guard), feeds each replica its share of every global batch, steps
the compiled optimizer (which all-reduces the gradients), validates on the chief, and ends by
checking that every replica holds identical weights. Only the chief keeps a run folder: the
others take its resume point (epoch, weights, optimizer state) from it when training starts.
"""

import hashlib

import numpy as np

import keras
import tensorflow as tf


def weights_sha256(model):
    """The sha256 of all model weights in order: equal digests, identical networks."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()


def fit(model, make_batches, *, strategy, epochs, initial_epoch, callbacks, validation=None, label_smoothing=0.0, verbose=0):
    """Train the compiled `model` (built in `strategy.scope()`) from `initial_epoch` to `epochs`.

    make_batches((replica, replicas)) gives that replica's `Batches` (they prepare batches ahead);
    `validation` is (images, one-hot labels), evaluated after every epoch (None: not on this
    worker); `verbose=1` adds a progress bar. Returns the sha256 of the final weights, the same
    on every worker (else RuntimeError).
    """
    replicas = strategy.num_replicas_in_sync
    local_ids = [int(i) for i in strategy.experimental_local_results(
        strategy.experimental_distribute_values_from_function(lambda ctx: ctx.replica_id_in_sync_group))]
    shards = {i: make_batches((i, replicas)) for i in local_ids}
    steps = len(shards[local_ids[0]])
    global_batch = shards[local_ids[0]].batch_size
    per_example_loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing, reduction=None)
    optimizer = model.optimizer
    with strategy.scope():
        optimizer.build(model.trainable_variables)  # here, not lazily inside a replica

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), "float32")
            losses = per_example_loss(labels, logits)
            loss = tf.nn.compute_average_loss(losses, global_batch_size=global_batch)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return tf.reduce_sum(losses), _correct(labels, logits)

    statistics = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]

    @tf.function
    def average_statistics():  # batch-norm moving means/variances are updated by each replica alone
        local = strategy.run(lambda: [tf.identity(v.value) for v in statistics])
        for variable, values in zip(statistics, local):
            variable.assign(strategy.reduce("MEAN", values, axis=None))

    forward = tf.function(lambda images: tf.cast(model(images, training=False), "float32"), reduce_retracing=True)

    @tf.function
    def train_step(images, labels):
        loss_sum, correct = strategy.run(replica_step, args=(images, labels))
        return strategy.reduce("SUM", loss_sum, axis=None), strategy.reduce("SUM", correct, axis=None)

    def fetch(step):  # this worker's shares of global batch `step`, as per-replica tensors
        parts = {i: shards[i][step] for i in local_ids}
        return tuple(
            strategy.experimental_distribute_values_from_function(lambda ctx, k=k: tf.constant(parts[ctx.replica_id_in_sync_group][k]))
            for k in (0, 1)
        )

    callbacks = keras.callbacks.CallbackList(
        callbacks, add_progbar=bool(verbose), model=model, epochs=epochs, steps=steps, verbose=verbose)
    model.stop_training = False
    callbacks.on_train_begin()  # the chief's BackupAndRestore restores the weights and optimizer state here
    _copy_from_chief(strategy, [*model.variables, *optimizer.variables])
    logs = {}
    for epoch in range(initial_epoch, epochs):
        callbacks.on_epoch_begin(epoch)
        for shard in shards.values():
            shard.set_epoch(epoch)
        loss_total = correct_total = 0.0
        for step in range(steps):
            images, labels = fetch(step)
            callbacks.on_train_batch_begin(step)
            loss_sum, correct = train_step(images, labels)
            loss_total, correct_total = loss_total + loss_sum, correct_total + correct
            seen = (step + 1) * global_batch
            logs = {"loss": loss_total / seen, "accuracy": correct_total / seen}
            callbacks.on_train_batch_end(step, logs)
            if model.stop_training:  # every worker sees the same all-reduced loss, so all stop here
                break
        logs = {name: float(value) for name, value in logs.items()}
        if statistics:
            average_statistics()
        if validation is not None:
            logs.update(_validate(forward, *validation, per_example_loss, global_batch))
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callbacks.on_train_end(logs)
    return _agreed_weights_sha256(model, strategy)


def chief_value(strategy, value):
    """The chief's `value` (a number), on every worker."""
    # In a tf.function: run eagerly, TensorFlow warns about the collective's overhead.
    broadcast = tf.function(lambda: _from_chief(strategy, lambda: [tf.constant(value, "float64")]), autograph=False)
    return broadcast()[0].numpy().item()


def _copy_from_chief(strategy, variables):
    @tf.function
    def copy():
        for variable, value in zip(variables, _from_chief(strategy, lambda: [v.value for v in variables])):
            variable.assign(tf.cast(value, variable.dtype))

    copy()


def _from_chief(strategy, read):
    """The tensors `read()` gives on the chief (replica 0), on every worker, as float64."""

    def chief_only():
        first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
        return [tf.where(first, tf.cast(t, "float64"), tf.zeros(t.shape, "float64")) for t in read()]

    return [strategy.reduce("SUM", values, axis=None) for values in strategy.run(chief_only)]


def _correct(labels, logits):
    return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), tf.argmax(labels, -1)), "float32"))


def _validate(forward, images, labels, per_example_loss, batch_size):
    loss_total = correct = 0.0
    for start in range(0, len(images), batch_size):
        logits = forward(tf.constant(images[start : start + batch_size]))
        batch_labels = tf.constant(labels[start : start + batch_size])
        loss_total += float(tf.reduce_sum(per_example_loss(batch_labels, logits)))
        correct += float(_correct(batch_labels, logits))
    return {"val_loss": loss_total / len(images), "val_accuracy": correct / len(images)}


def _agreed_weights_sha256(model, strategy):
    digest = weights_sha256(model)
    mine = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant([list(bytes.fromhex(digest))], "int32"))
    every = strategy.gather(mine, axis=0).numpy()
    if not (every == every[:1]).all():
        raise RuntimeError(f"The {len(every)} replicas ended with different weights (this one: sha256 {digest}).")
    print(f"final weights sha256 {digest}, identical on all {len(every)} replicas", flush=True)
    return digest
