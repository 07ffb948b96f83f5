"""Model families; importing this package registers every builder."""

from zoo.models.alexnet import alexnet_lite
from zoo.models.lenet import lenet5
from zoo.models.vgg import vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn
from zoo.registry import get_model, list_models, model_info, register_model

__all__ = [
    "alexnet_lite", "lenet5", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "get_model", "list_models", "model_info", "register_model",
]
