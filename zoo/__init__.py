"""zoo: a Keras 3 model zoo for image classification.

    from zoo import vgg16_bn, get_model, list_models

Attributes load on first use, so `import zoo` (and the `zoo` command's start) stays light.
"""

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it. zoo.models registers every builder on import.
_WHERE = {name: "zoo.models" for name in [
    "alexnet_lite", "lenet5", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "get_model", "list_models", "model_info", "register_model",
]}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *__all__])
