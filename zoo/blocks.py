"""The two building pieces every zoo model is made of: a conv-pool block and a classifier head.

Both are plain functions over built-in Keras layers (no Lambda, no custom layers), so any model
built from them saves to `.keras` and loads with `safe_mode=True` without importing zoo.
"""

import dataclasses

import keras
from keras import layers

POOLS = {"max": layers.MaxPooling2D, "avg": layers.AveragePooling2D, None: None}
GLOBAL_POOLS = {"avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D}


@dataclasses.dataclass(frozen=True)
class ConvPool:
    """One conv-pool block as data: `len(filters)` convolutions, then optional pooling and dropout.

    Args:
        filters: output channels of each convolution, in order.
        kernel_size: square kernel size of every convolution.
        strides: stride of every convolution.
        padding: `"same"` or `"valid"`.
        pool: `"max"`, `"avg"` or `None` (no pooling).
        pool_size: square window and stride of the pooling.
        dropout: dropout rate after the block (0 for none).
    """

    filters: tuple
    kernel_size: int = 3
    strides: int = 1
    padding: str = "same"
    pool: str | None = "max"
    pool_size: int = 2
    dropout: float = 0.0

    def output_size(self, size):
        """Spatial size after this block for an input of `size` pixels (0 if it vanishes)."""
        for _ in self.filters:
            if self.padding == "valid":
                size = size - self.kernel_size + 1
            size = max(0, -(-size // self.strides))
        if self.pool:
            size = size // self.pool_size
        return size


def min_input_size(blocks):
    """Smallest square input for which every block still has a spatial size of at least 1."""
    size = 1
    while not _fits(size, blocks):
        size += 1
    return size


def _fits(size, blocks):
    for block in blocks:
        size = block.output_size(size)
        if size < 1:
            return False
    return True


def conv_pool_block(x, block, *, batch_norm=False, activation="relu", name="block1"):
    """Apply one `ConvPool` block to tensor `x`.

    Each convolution is Conv-BN-activation when `batch_norm` (so BN folds into the conv on
    export) and a conv with its activation fused otherwise, as in `keras.applications.VGG16`.
    Layers are named `{name}_conv{i}`, `{name}_bn{i}`, `{name}_act{i}`, `{name}_pool`, `{name}_drop`.
    """
    for i, filters in enumerate(block.filters, start=1):
        x = layers.Conv2D(
            filters,
            block.kernel_size,
            strides=block.strides,
            padding=block.padding,
            activation=None if batch_norm else activation,
            name=f"{name}_conv{i}",
        )(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
            x = layers.Activation(activation, name=f"{name}_act{i}")(x)
    if block.pool:
        x = POOLS[block.pool](block.pool_size, name=f"{name}_pool")(x)
    if block.dropout:
        x = layers.Dropout(block.dropout, name=f"{name}_drop")(x)
    return x


def classifier_head(
    x,
    *,
    num_classes,
    fc_units=(),
    dropout=0.0,
    activation="relu",
    classifier_activation=None,
):
    """Flatten, hidden dense layers `fc1, fc2, ...` (each followed by dropout), then `predictions`.

    The `predictions` layer computes in float32 under a mixed precision policy, as the Keras
    mixed precision guide recommends for the last layer.
    """
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(fc_units, start=1):
        x = layers.Dense(units, activation=activation, name=f"fc{i}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"fc{i}_drop")(x)
    policy = keras.config.dtype_policy()
    mixed = policy.compute_dtype != policy.variable_dtype
    return layers.Dense(
        num_classes,
        activation=classifier_activation,
        dtype="float32" if mixed else None,
        name="predictions",
    )(x)


def global_pool(x, pooling):
    """Global `"avg"` or `"max"` pooling (the `pooling` option of headless models), or `x` as is."""
    if pooling is None:
        return x
    return GLOBAL_POOLS[pooling](name=f"{pooling}_pool")(x)
