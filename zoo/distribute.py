"""Scale-out: tf.distribute strategies on the TensorFlow backend, keras.distribution on JAX."""

import contextlib

import keras

STRATEGIES = ("mirrored", "multi_worker")


def setup(strategy):
    """(scope, replicas) for `strategy`: None or "mirrored" (all local devices).

    Build and compile the model inside `scope()`; the global batch is the recipe's batch size times
    `replicas`. Under JAX, "mirrored" shards each batch over the local devices with
    `keras.distribution.DataParallel`.
    """
    if strategy is None:
        return contextlib.nullcontext, 1
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy. Valid: {', '.join(STRATEGIES)}. Received: strategy={strategy!r}")
    if strategy == "multi_worker":
        # Keras 3's model.fit fails under MultiWorkerMirroredStrategy with two or more workers
        # ("Attempt to convert a value (PerReplica...)"; keras-team/keras#20585, still open).
        raise ValueError(
            "strategy='multi_worker' is not supported: Keras 3's model.fit does not run under "
            "tf.distribute.MultiWorkerMirroredStrategy (keras-team/keras#20585). Use 'mirrored' on one machine."
        )
    backend = keras.backend.backend()
    if backend == "jax":
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return contextlib.nullcontext, len(devices)
    if backend != "tensorflow":
        raise ValueError(f"Strategies need the TensorFlow or JAX backend. Received: backend={backend!r}")
    import tensorflow as tf

    chosen = tf.distribute.MirroredStrategy()
    return chosen.scope, chosen.num_replicas_in_sync
