"""Scale-out: tf.distribute strategies on the TensorFlow backend, keras.distribution on JAX."""

import contextlib
import dataclasses
import json
import os

import keras

STRATEGIES = ("mirrored", "multi_worker")


@dataclasses.dataclass(frozen=True)
class Distribution:
    """How a run is spread: build and compile inside `scope()`; the global batch is the recipe's
    batch size times `replicas`. `strategy` is the tf.distribute strategy of a multi-worker run
    (None otherwise); only the chief writes the run folder."""

    scope: object = contextlib.nullcontext
    replicas: int = 1
    strategy: object = None
    worker: int = 0
    chief: bool = True


def tf_config(environ=os.environ):
    """(this worker's index among all tasks, whether it is the chief, number of tasks) from `TF_CONFIG`."""
    text = environ.get("TF_CONFIG")
    if not text:
        raise ValueError(
            "strategy='multi_worker' needs TF_CONFIG, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}. '
            "Received: TF_CONFIG unset"
        )
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        tasks = [(kind, i) for kind in ("chief", "worker") for i in range(len(cluster.get(kind, [])))]
        me = (task["type"], int(task["index"]))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"TF_CONFIG is not a cluster and task description ({error}). Received: TF_CONFIG={text!r}") from None
    if me not in tasks:
        raise ValueError(f"TF_CONFIG's task is not in its cluster (tasks: {tasks}). Received: TF_CONFIG={text!r}")
    return tasks.index(me), tasks.index(me) == 0, len(tasks)


def setup(strategy):
    """The `Distribution` for `strategy`: None, "mirrored" (all local devices) or "multi_worker".

    Under JAX, "mirrored" shards each batch over the local devices with `keras.distribution.DataParallel`.
    "multi_worker" is tf.distribute.MultiWorkerMirroredStrategy over the workers of `TF_CONFIG`
    (TensorFlow backend only); call this before TensorFlow runs any op.
    """
    if strategy is None:
        return Distribution()
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy. Valid: {', '.join(STRATEGIES)}. Received: strategy={strategy!r}")
    backend = keras.backend.backend()
    if strategy == "multi_worker":
        if backend != "tensorflow":
            raise ValueError(f"strategy='multi_worker' needs the TensorFlow backend. Received: backend={backend!r}")
        worker, chief, _ = tf_config()
        import tensorflow as tf

        chosen = tf.distribute.MultiWorkerMirroredStrategy()
        return Distribution(chosen.scope, chosen.num_replicas_in_sync, chosen, worker, chief)
    if backend == "jax":
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return Distribution(replicas=len(devices))
    if backend != "tensorflow":
        raise ValueError(f"Strategies need the TensorFlow or JAX backend. Received: backend={backend!r}")
    import tensorflow as tf

    chosen = tf.distribute.MirroredStrategy()
    return Distribution(chosen.scope, chosen.num_replicas_in_sync)
