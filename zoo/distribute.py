"""Scale-out: tf.distribute strategies on the TensorFlow backend, keras.distribution on JAX."""

import contextlib

import keras

STRATEGIES = ("mirrored", "multi_worker")


def setup(strategy):
    """(scope, replicas) for `strategy`: None, "mirrored" (all local devices) or "multi_worker" (TF_CONFIG).

    Build and compile the model inside `scope()`; the global batch is the recipe's batch size times
    `replicas`. Under JAX, either name shards each batch over the local devices with
    `keras.distribution.DataParallel`.
    """
    if strategy is None:
        return contextlib.nullcontext, 1
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy. Valid: {', '.join(STRATEGIES)}. Received: strategy={strategy!r}")
    if keras.backend.backend() == "jax":
        if strategy == "multi_worker":
            raise ValueError("strategy='multi_worker' needs the TensorFlow backend; under JAX use 'mirrored' (DataParallel over local devices).")
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return contextlib.nullcontext, len(devices)
    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"Strategies need the TensorFlow or JAX backend. Received: backend={keras.backend.backend()!r}")
    import tensorflow as tf

    if strategy == "mirrored":
        chosen = tf.distribute.MirroredStrategy()
    else:
        chosen = tf.distribute.MultiWorkerMirroredStrategy()
    return chosen.scope, chosen.num_replicas_in_sync
