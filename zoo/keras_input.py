"""What zoo hands Keras' `fit`, `evaluate` and `predict`: in-memory data, without tf.data's autotuning.

Under TensorFlow, Keras turns tf.data's autotuning on for the pipelines it builds from arrays and
`PyDataset`s. Its tuning thread sleeps for a period that doubles as the pipeline runs, and ending the
pipeline (every epoch, every validation, every `predict`) now and then waits for that thread's next
wake-up with every core idle: on 2-core EPYCs a VGG11-BN epoch then took twice its time (TF 2.21,
Keras 3.15). The same batches in the same order, through a tf.data pipeline with autotuning off,
never did. Every `fit` and `predict` of zoo reads through here (training, validation, evaluation, the
whitened first convolution, `zoo viz`); the multi-worker loop feeds its steps tensors without tf.data.
Other backends get the data unchanged.
"""

import keras

PREFETCH = 1  # batches prepared while a step runs (Batches' own `threads` prepare more ahead)


def uses_tf_data():
    """Whether Keras reads data through tf.data here (the TensorFlow backend)."""
    return keras.backend.backend() == "tensorflow"


def batches_input(batches):
    """`batches` (a `zoo.data.Batches`; an epoch is its batches in order) as Keras should read it.

    Under TensorFlow and for host arrays, a generator pipeline that reads `batches[0]`, `batches[1]`, ... each time Keras
    starts an epoch (after `on_epoch_begin`, where `EpochSync` pins the epoch), as Keras' own adapter does."""
    if not uses_tf_data() or batches.on_device:  # device batches are tensors already
        return batches
    import tensorflow as tf

    images, labels = batches[0]
    signature = (
        tf.TensorSpec((None, *images.shape[1:]), tf.as_dtype(images.dtype)),
        tf.TensorSpec((None, *labels.shape[1:]), tf.as_dtype(labels.dtype)),
    )

    def epoch():
        for index in range(len(batches)):
            yield batches[index]

    dataset = tf.data.Dataset.from_generator(epoch, output_signature=signature)
    return _without_autotuning(dataset.apply(tf.data.experimental.assert_cardinality(len(batches))))  # Keras' steps per epoch


def arrays_input(arrays, batch_size):
    """In-memory `arrays` (images, or a tuple of images and labels) in batches of `batch_size`, in order.

    Returns (data, batch_size to pass Keras): a tf.data pipeline and None under TensorFlow, else the
    arrays and `batch_size`: for `predict`'s `x` or `fit`'s `validation_data` (for `fit`'s own `x` and `y`:
    `fit_arrays`)."""
    if not uses_tf_data():
        return arrays, batch_size
    import tensorflow as tf

    return _without_autotuning(tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size)), None


def fit_arrays(images, labels, batch_size):
    """`fit`'s keyword arguments for in-memory `images` and `labels` in batches of `batch_size`, in order:
    `model.fit(**fit_arrays(images, labels, 128), shuffle=False)`, whatever the backend."""
    if not uses_tf_data():
        return {"x": images, "y": labels, "batch_size": batch_size}
    return {"x": arrays_input((images, labels), batch_size)[0], "batch_size": None}  # batches of (images, labels)


def _without_autotuning(dataset):
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(PREFETCH).with_options(options)
