"""VGG-11/13/16/19 (Simonyan & Zisserman, 2015), configurations A, B, D and E, with `_bn` variants.

The configurations are torchvision's: numbers are the output channels of 3x3 convolutions and
"M" a 2x2 max pooling. At `input_shape=(224, 224, 3), num_classes=1000, fc_units=(4096, 4096)`
the networks are the paper's; the CIFAR default head is `fc_units=(512, 512)`.
"""

from zoo.blocks import ConvPool
from zoo.models.base import Architecture, build_model
from zoo.registry import register_model

REFERENCE = "Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition, ICLR 2015 (arXiv:1409.1556)"

CONFIGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def blocks_from_config(config):
    """Split a torchvision-style config into `ConvPool` blocks, one per "M"."""
    blocks, filters = [], []
    for item in config:
        if item == "M":
            blocks.append(ConvPool(filters=tuple(filters)))
            filters = []
        else:
            filters.append(item)
    return tuple(blocks)


def _vgg(name, config, batch_norm, options):
    arch = Architecture(blocks_from_config(CONFIGS[config]), fc_units=(512, 512), dropout=0.5, batch_norm=batch_norm)
    return build_model(arch, **{"name": name, **options})


def _register(params, macs):
    return register_model(params=params, macs=macs, min_input_size=32, reference=REFERENCE)


@_register(params=9_750_922, macs=153_293_824)
def vgg11(**options):
    """VGG-11 (configuration A). Options: see `zoo.models.base.build_model`."""
    return _vgg("vgg11", "A", False, options)


@_register(params=9_761_930, macs=153_293_824)
def vgg11_bn(**options):
    """VGG-11 (configuration A) with batch norm. Options: see `zoo.models.base.build_model`."""
    return _vgg("vgg11_bn", "A", True, options)


@_register(params=9_935_434, macs=228_791_296)
def vgg13(**options):
    """VGG-13 (configuration B). Options: see `zoo.models.base.build_model`."""
    return _vgg("vgg13", "B", False, options)


@_register(params=9_947_210, macs=228_791_296)
def vgg13_bn(**options):
    """VGG-13 (configuration B) with batch norm. Options: see `zoo.models.base.build_model`."""
    return _vgg("vgg13_bn", "B", True, options)


@_register(params=15_245_130, macs=313_725_952)
def vgg16(**options):
    """VGG-16 (configuration D). Options: see `zoo.models.base.build_model`."""
    return _vgg("vgg16", "D", False, options)


@_register(params=15_262_026, macs=313_725_952)
def vgg16_bn(**options):
    """VGG-16 (configuration D) with batch norm. Options: see `zoo.models.base.build_model`."""
    return _vgg("vgg16_bn", "D", True, options)


@_register(params=20_554_826, macs=398_660_608)
def vgg19(**options):
    """VGG-19 (configuration E). Options: see `zoo.models.base.build_model`."""
    return _vgg("vgg19", "E", False, options)


@_register(params=20_576_842, macs=398_660_608)
def vgg19_bn(**options):
    """VGG-19 (configuration E) with batch norm. Options: see `zoo.models.base.build_model`."""
    return _vgg("vgg19_bn", "E", True, options)
