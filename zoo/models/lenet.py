"""LeNet-5 (LeCun et al., 1998) for 32x32 inputs, with an optional batch-norm switch."""

from zoo.blocks import ConvPool
from zoo.models.base import Architecture, build_model
from zoo.registry import register_model

# The classic 6-16-120-84 network: two 5x5 valid convolutions, each followed by 2x2 pooling.
# ReLU and max pooling replace the paper's scaled tanh and trainable subsampling, as in most
# modern re-implementations; the parameter count is unchanged (62,006 on 32x32x3 input).
LENET5 = Architecture(
    blocks=(
        ConvPool(filters=(6,), kernel_size=5, padding="valid"),
        ConvPool(filters=(16,), kernel_size=5, padding="valid"),
    ),
    fc_units=(120, 84),
    dropout=0.0,
)


@register_model(
    params=62_006,
    macs=651_720,
    min_input_size=16,
    reference="LeCun, Bottou, Bengio & Haffner, Gradient-Based Learning Applied to Document Recognition, Proc. IEEE 1998",
)
def lenet5(**options):
    """LeNet-5: conv(6, 5x5)-pool-conv(16, 5x5)-pool-fc120-fc84-logits.

    Options: see `zoo.models.base.build_model` (`batch_norm=True` adds BN after each conv).
    """
    return build_model(LENET5, **{"name": "lenet5", **options})
