"""AlexNet-lite: the AlexNet design shrunk for 32x32 inputs such as CIFAR-10."""

from zoo.blocks import ConvPool
from zoo.models.base import Architecture, build_model
from zoo.registry import register_model

# AlexNet's five convolutions and three max pools with the 64-192-384-256-256 channel plan of
# torchvision's AlexNet (Krizhevsky 2014, "One weird trick", arXiv:1404.5997). For 32x32 inputs the
# 11x11/4 stem becomes a 5x5/1 conv and the 3x3/2 overlapping pools become 2x2 pools, so the
# maps go 32 -> 16 -> 8 -> 4; the 4096-wide head becomes two 1024-wide dense layers with dropout.
ALEXNET_LITE = Architecture(
    blocks=(
        ConvPool(filters=(64,), kernel_size=5),
        ConvPool(filters=(192,), kernel_size=5),
        ConvPool(filters=(384, 256, 256), kernel_size=3),
    ),
    fc_units=(1024, 1024),
    dropout=0.5,
)


@register_model(
    params=7_706_442,
    macs=225_650_688,
    min_input_size=8,
    reference="Krizhevsky, Sutskever & Hinton, ImageNet Classification with Deep Convolutional Neural Networks, NeurIPS 2012",
)
def alexnet_lite(**options):
    """AlexNet-lite for 32x32 inputs: 7,706,442 parameters at the defaults.

    conv(64, 5x5)-pool / conv(192, 5x5)-pool / conv(384, 3x3)-conv(256, 3x3)-conv(256, 3x3)-pool,
    then fc1024-dropout-fc1024-dropout-logits. Every conv is 'same'-padded, every pool 2x2.
    Options: see `zoo.models.base.build_model`.
    """
    return build_model(ALEXNET_LITE, **{"name": "alexnet_lite", **options})
