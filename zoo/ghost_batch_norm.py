"""Ghost batch norm (Hoffer et al. 2017; Page's "How to train your ResNet 8"): while training, each batch
norm normalizes groups of `size` images by the group's own mean and variance instead of the whole batch's,
a regularizer. Only the training step changes: the layers stay Keras' `BatchNormalization` (their class,
config and variables), so saved files hold plain batch norms and inference is Keras' own.

The moving statistics follow the groups' average mean and variance (PyTorch's ghost batch norm keeps one
set per group and averages them for inference: the same), so inference normalizes as training did.
"""

import math

import keras
from keras import ops


def use_ghost_batches(model, size, batch_size):
    """Make every `BatchNormalization` of `model` normalize groups of `size` images while training.

    `batch_size` is the step's batch per replica: its images split into ceil(batch_size / size) groups in
    order (a smaller last batch into fewer, the last group shorter). Returns how many layers changed."""
    if not isinstance(size, int) or size < 2:
        raise ValueError(f"the ghost batch size must be a whole number >= 2. Received: size={size!r}")
    groups = math.ceil(batch_size / size)
    changed = 0
    for layer in model.layers:
        if type(layer) is keras.layers.BatchNormalization and not layer.renorm and not layer.synchronized:
            layer.call = _ghost_call(layer, layer.call, size, groups)
            changed += 1
    return changed


def _ghost_call(layer, plain_call, size, groups):
    def call(inputs, training=None, mask=None):
        if not (training and layer.trainable) or mask is not None or groups == 1:
            return plain_call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, "float32")  # as Keras' own: statistics in float32 under mixed precision
        axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
        axis %= len(x.shape)
        moved = ops.moveaxis(x, axis, -1)  # [N, ..., C]
        channels = moved.shape[-1]
        flat = ops.reshape(moved, (ops.shape(moved)[0], -1, channels))  # [N, positions, C]
        n = ops.shape(flat)[0]
        group = ops.minimum(ops.arange(n) // size, groups - 1)  # a batch larger than expected joins the last group
        count = ops.segment_sum(ops.ones((n,), "float32"), group, num_segments=groups) * ops.cast(ops.shape(flat)[1], "float32")
        count = ops.maximum(count, 1.0)[:, None]  # [G, 1]: empty groups (a short last batch) divide by 1
        mean = ops.segment_sum(ops.sum(flat, axis=1), group, num_segments=groups) / count  # [G, C]
        centred = flat - ops.take(mean, group, axis=0)[:, None, :]
        variance = ops.segment_sum(ops.sum(ops.square(centred), axis=1), group, num_segments=groups) / count
        normed = centred * ops.take(ops.rsqrt(variance + layer.epsilon), group, axis=0)[:, None, :]
        if layer.scale:
            normed = normed * ops.cast(layer.gamma, "float32")
        if layer.center:
            normed = normed + ops.cast(layer.beta, "float32")
        used = ops.cast(ops.arange(groups) <= (n - 1) // size, "float32")[:, None]  # groups holding images
        share = used / ops.sum(used)
        momentum = layer.momentum
        layer.moving_mean.assign(layer.moving_mean * momentum + ops.sum(mean * share, axis=0) * (1.0 - momentum))
        layer.moving_variance.assign(layer.moving_variance * momentum + ops.sum(variance * share, axis=0) * (1.0 - momentum))
        out = ops.moveaxis(ops.reshape(normed, ops.shape(moved)), -1, axis)
        return ops.cast(out, layer.compute_dtype)

    return call
