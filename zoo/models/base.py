"""Turn an architecture (data) plus a user's options into a Keras model, validating first."""

import dataclasses
import os
import re
import zipfile

import keras
from keras import layers

from zoo import pretrained
from zoo.blocks import GLOBAL_POOLS, classifier_head, conv_pool_block, global_pool, min_input_size

WEIGHTS_SUFFIXES = (".weights.h5", ".keras")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A network as data: conv-pool blocks, then a head with `fc_units` hidden dense layers."""

    blocks: tuple
    fc_units: tuple
    dropout: float = 0.0
    batch_norm: bool = False

    @property
    def min_input_size(self):
        return min_input_size(self.blocks)


def build_model(arch, *, name, weights=None, **options):
    """Build `arch` as a functional Keras model, with random, released or a file's weights.

    `weights`: `None` (random initialisation), the tag of released weights such as `"cifar10"`
    (see `zoo list --pretrained`), or the path of a `.weights.h5` or `.keras` file. With released
    weights, options left unset take the values the weights were trained with (from the model
    card) and an explicit conflicting option is a ValueError. Other options: see `_build`.
    """
    if pretrained.is_tag(weights):
        card = pretrained.card(name, weights)
        options = pretrained.resolve_options(card, options)
        weights = pretrained.weights_file(card)
    return _build(arch, name=name, weights=weights, **options)


def _build(
    arch,
    *,
    name,
    input_shape=(32, 32, 3),
    num_classes=10,
    include_top=True,
    pooling=None,
    batch_norm=None,
    dropout=None,
    fc_units=None,
    classifier_activation=None,
    include_preprocessing=True,
    weights=None,
):
    """Build `arch` as a functional Keras model.

    Args:
        input_shape: `(height, width, channels)`; CIFAR-sized `(32, 32, 3)` by default.
        num_classes: number of classes of the `predictions` layer (with `include_top`).
        include_top: whether to add the classifier head (flatten, `fc_units` dense layers, logits).
        pooling: for `include_top=False`: `None` (4D feature map), `"avg"` or `"max"` (global pooling).
        batch_norm: BatchNormalization after every convolution (Conv-BN-ReLU). Defaults to the
            architecture's setting (on for the `_bn` variants).
        dropout: dropout rate after each hidden dense layer; defaults to the architecture's.
        fc_units: widths of the hidden dense layers, e.g. `(4096, 4096)` for the ImageNet VGG head.
        classifier_activation: `None` for logits (the default) or `"softmax"`.
        include_preprocessing: start with a weight-free `Rescaling` layer mapping raw 0-255 pixels to
            [-1, 1], so the model takes raw RGB images.
        weights: `None` (random initialisation) or the path of a `.weights.h5` or `.keras` file;
            with `include_top=False`, the file's classifier weights are left out.
        name: the model name.
    """
    _validate(arch, locals())
    batch_norm = arch.batch_norm if batch_norm is None else batch_norm
    dropout = arch.dropout if dropout is None else dropout
    fc_units = arch.fc_units if fc_units is None else tuple(fc_units)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    if include_preprocessing:
        x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescaling")(x)
    for i, block in enumerate(arch.blocks, start=1):
        x = conv_pool_block(x, block, batch_norm=batch_norm, name=f"block{i}")
    if include_top:
        x = classifier_head(
            x,
            num_classes=num_classes,
            fc_units=fc_units,
            dropout=dropout,
            classifier_activation=classifier_activation,
        )
    else:
        x = global_pool(x, pooling)
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        check_weights_fit(model, weights, head_optional=not include_top)
        model.load_weights(weights)
    return model


def _validate(arch, options):
    """Raise a ValueError naming the first bad option, before any layer is built."""

    def fail(message, key):
        raise ValueError(f"{message} Received: {key}={options[key]!r}")

    name = options["name"]
    shape = options["input_shape"]
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        fail("`input_shape` must be 3 positive ints (height, width, channels).", "input_shape")
    if min(shape[:2]) < arch.min_input_size:
        fail(
            f"Input size must be at least {arch.min_input_size}x{arch.min_input_size} for "
            f"'{name}', whose blocks would otherwise shrink the image to nothing.",
            "input_shape",
        )
    num_classes = options["num_classes"]
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        fail("`num_classes` must be an int >= 1.", "num_classes")
    dropout = options["dropout"]
    if dropout is not None and not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        fail("`dropout` must be a rate in [0, 1).", "dropout")
    if options["pooling"] not in (None, *GLOBAL_POOLS):
        fail("`pooling` must be None, 'avg' or 'max'.", "pooling")
    if options["include_top"] and options["pooling"] is not None:
        fail("`pooling` applies only with `include_top=False`.", "pooling")
    fc_units = options["fc_units"]
    if fc_units is not None:
        if not isinstance(fc_units, (tuple, list)) or not all(isinstance(u, int) and u > 0 for u in fc_units):
            fail("`fc_units` must be a sequence of positive ints.", "fc_units")
        if not options["include_top"] and len(fc_units):
            fail("`fc_units` has no effect with `include_top=False`.", "fc_units")
    if options["classifier_activation"] not in (None, "softmax"):
        fail("`classifier_activation` must be None (logits) or 'softmax'.", "classifier_activation")
    weights = options["weights"]
    if weights is not None:
        if not isinstance(weights, (str, os.PathLike)) or not os.path.isfile(weights):
            fail(
                "The `weights` argument should be either `None` (random initialization), the tag of "
                "released weights (e.g. 'cifar10'), or the path to an existing weights file.",
                "weights",
            )
        if not str(weights).endswith(WEIGHTS_SUFFIXES):
            fail(f"A weights file must end in {' or '.join(WEIGHTS_SUFFIXES)}.", "weights")


def check_weights_fit(model, path, head_optional=False):
    """Raise a ValueError naming the first layer whose weights in `path` do not fit `model`.

    With `head_optional`, the file may hold weights of dense layers (a classifier head) that `model` lacks.
    """
    stored = _stored_shapes(path)
    used = {}
    for layer in model.layers:
        key = _unique(_snake_case(type(layer).__name__), used)
        expected = [tuple(w.shape) for w in layer.weights]
        found = stored.pop(key, [])
        if expected != found:
            raise ValueError(
                f"Weights file {str(path)!r} does not fit model '{model.name}': layer "
                f"'{layer.name}' expects weights of shapes {expected}, the file holds {found}."
            )
    leftover = [key for key, shapes in stored.items() if shapes and not (head_optional and key.startswith("dense"))]
    if leftover:
        raise ValueError(
            f"Weights file {str(path)!r} does not fit model '{model.name}': it holds weights "
            f"for layers the model does not have ({', '.join(leftover)})."
        )


def _stored_shapes(path):
    """Per-layer weight shapes in a Keras 3 weights file, keyed as Keras stores them."""
    import h5py  # a Keras dependency

    def read(h5):
        return {
            key: [tuple(group["vars"][str(i)].shape) for i in range(len(group.get("vars", {})))]
            for key, group in h5["layers"].items()
        }

    path = str(path)
    try:
        if path.endswith(".keras"):
            with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as f:
                with h5py.File(f, "r") as h5:
                    return read(h5)
        with h5py.File(path, "r") as h5:
            return read(h5)
    except (OSError, KeyError, zipfile.BadZipFile) as e:  # h5py: "Unable to synchronously open file (file signature not found)"
        kind = "a .keras archive (zip) holding model.weights.h5" if path.endswith(".keras") else "an HDF5 file written by Keras' save_weights"
        raise ValueError(f"Weights file {path!r} cannot be read: it is not {kind} (corrupt or truncated?). {type(e).__name__}: {e}") from None


def _snake_case(name):
    # The naming Keras' saving library uses for a layer's entry in a weights file.
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _unique(name, used):
    count = used.get(name, 0)
    used[name] = count + 1
    return name if count == 0 else f"{name}_{count}"


def count_macs(model):
    """Multiply-accumulates per image of the Conv2D and Dense layers of `model`."""
    macs = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, height, width, channels = layer.output.shape
            kh, kw = layer.kernel_size
            macs += height * width * channels * kh * kw * layer.input.shape[-1] // layer.groups
        elif isinstance(layer, layers.Dense):
            macs += layer.input.shape[-1] * layer.units
    return macs


def options_of(model):
    """The builder options that shape `model`'s weights, read back from a model built by `build_model`."""
    names = {layer.name for layer in model.layers}
    fc_units = [model.get_layer(f"fc{i}").units for i in range(1, len(model.layers)) if f"fc{i}" in names]
    options = {
        "input_shape": list(model.input.shape[1:]),
        "num_classes": model.output.shape[-1],
        "batch_norm": any(isinstance(layer, layers.BatchNormalization) for layer in model.layers),
        "fc_units": fc_units,
        "include_preprocessing": "rescaling" in names,
    }
    if fc_units:
        options["dropout"] = model.get_layer("fc1_drop").rate if "fc1_drop" in names else 0.0
    return options
