"""Fine-tuning: a recipe that starts from weights (a released tag, a `.weights.h5` or `.keras` file, a
run folder), carried into a model built for the data's classes and image size; and the pieces of the
two-phase schedule (a frozen backbone, then a lower learning rate for the backbone than for the head).

As in timm (`pretrained=True, num_classes=N`) and torchvision, only what does not fit is new: every
layer whose weights have the same shapes keeps them. The convolutional backbone always fits (its
weights do not depend on the image size); the classifier (`predictions`) is new when the classes
differ in number or names, and a hidden dense layer (`fc1`) is new when another image size changes
the width of the flattened feature map feeding it (VGG at 64x64: 2x2x512 instead of 1x1x512).
Weights for another channel count (RGB weights for greyscale data, or the reverse) are adapted in the
first convolution as timm's `in_chans` does: its kernel summed over RGB for one channel, or repeated
and divided by three for three, so a grey image repeated as RGB gives the same activations.
"""

import dataclasses
import json
import pathlib

import keras
import numpy as np

from zoo import pretrained
from zoo.files import sha256
from zoo.loading import find_labels, load_keras_file
from zoo.models import get_model, model_info

HEAD = "flatten"  # the first layer of zoo.blocks.classifier_head: everything before it is the backbone


@dataclasses.dataclass
class StartingWeights:
    """Where a recipe's weights come from, built as a model, with the class names they were trained on."""

    spec: str  # as the recipe gives it
    kind: str  # "released", "weights file", "model file", "run folder"
    file: pathlib.Path
    sha256: str
    model: keras.Model
    class_names: list | None

    def record(self):
        """What results.json and model cards keep of it."""
        return {"weights": self.spec, "kind": self.kind, "file": str(self.file), "sha256": self.sha256}


def resolve(model_name, weights, options):
    """The `StartingWeights` of a recipe's `[model] weights` for the model `model_name` built with the
    recipe's weight-shaping `options` (batch_norm, fc_units), or None for "none". A ValueError names
    a tag without releases, a missing file, or weights of another architecture."""
    if weights == pretrained.NONE:
        return None
    path = pathlib.Path(weights).expanduser()
    if pretrained.is_tag(weights):
        card = pretrained.card(model_name, weights)  # an error naming the models that have such weights
        model = get_model(model_name, weights=weights)
        file = pretrained.weights_file(card)
        return StartingWeights(weights, "released", file, sha256(file), model, card["data"]["classes"])
    if path.is_dir():
        file = path / "model.keras"
        if not file.is_file():
            raise ValueError(f"[model] weights: {path} is a folder without model.keras, not a run folder. Received: weights={weights!r}")
        results = path / "results.json"
        names = json.loads(results.read_text())["data"]["class_names"] if results.is_file() else find_labels(file)
        return _checked(StartingWeights(weights, "run folder", file, sha256(file), load_keras_file(file), names), model_name)
    if not path.is_file():
        raise ValueError(
            f"[model] weights must be a released tag ({', '.join(model_info(model_name).weights) or f'none for {model_name}'}), "
            f"a .weights.h5 or .keras file, a run folder, or {pretrained.NONE!r}. No such file or folder: {weights!r}"
        )
    if path.name.endswith(".keras"):
        return _checked(StartingWeights(weights, "model file", path, sha256(path), load_keras_file(path), find_labels(path)), model_name)
    if path.name.endswith(".weights.h5"):  # no head options or classes known: only its backbone is used
        model = get_model(model_name, include_top=False, weights=str(path), **{k: v for k, v in options.items() if k == "batch_norm"})
        return StartingWeights(weights, "weights file", path, sha256(path), model, None)
    raise ValueError(f"[model] weights: a weights file ends in .weights.h5 or .keras. Received: weights={weights!r}")


def _checked(start, model_name):
    if start.model.name != model_name:
        raise ValueError(
            f"[model] weights: {start.file} holds a '{start.model.name}', and this recipe trains a '{model_name}': "
            "fine-tuning starts from weights of the same architecture."
        )
    return start


def transfer(start, model, class_names):
    """Copy `start`'s weights into `model` layer by layer where they fit (the first convolution adapted
    to another channel count); returns what changed, `{"new": [layer names], "classes": (from, to) or
    None, "channels": (from, to) or None}`. A backbone layer that does not fit (another architecture,
    batch norm on one side only) is a ValueError naming it."""
    source = {layer.name: layer for layer in start.model.layers}
    first_conv = next((layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)), None)
    same_classes = start.class_names is not None and list(start.class_names) == list(class_names)
    new, channels, backbone_end = [], None, head_start(model)
    for index, layer in enumerate(model.layers):
        if not layer.weights:
            continue
        found = source.get(layer.name)
        fits = found is not None and [tuple(w.shape) for w in found.weights] == [tuple(w.shape) for w in layer.weights]
        if layer is first_conv and found is not None and not fits:
            adapted = adapt_input_channels(found.get_weights(), layer.weights[0].shape[2])
            if adapted is not None and [w.shape for w in adapted] == [tuple(w.shape) for w in layer.weights]:
                layer.set_weights(adapted)
                channels = (found.weights[0].shape[2], layer.weights[0].shape[2])
                continue
        if index < backbone_end:
            if not fits:
                raise ValueError(
                    f"[model] weights: {start.spec} do not fit layer '{layer.name}' of '{model.name}' "
                    f"({[tuple(w.shape) for w in layer.weights]}; the weights have {found and [tuple(w.shape) for w in found.weights]}). "
                    "Are they of another architecture, or with batch_norm set otherwise?"
                )
        elif not fits or (layer.name == "predictions" and not same_classes):
            new.append(layer.name)
            continue
        layer.set_weights(found.get_weights())
    source_classes = len(start.class_names) if start.class_names is not None else None
    return {"new": new, "classes": (source_classes, len(class_names)) if "predictions" in new else None, "channels": channels}


def adapt_input_channels(weights, channels):
    """A first convolution's `[kernel, bias...]` for `channels` input channels (1 <-> 3), or None: RGB
    kernels summed for grey, grey kernels repeated over RGB and divided by 3 (timm's `adapt_input_conv`)."""
    kernel, *rest = weights
    before = kernel.shape[2]
    if (before, channels) == (3, 1):
        kernel = kernel.sum(axis=2, keepdims=True)
    elif (before, channels) == (1, 3):
        kernel = np.repeat(kernel, 3, axis=2) / 3
    else:
        return None
    return [kernel, *rest]


def head_start(model):
    """The index of the first head layer (`flatten`); the layers before it are the backbone."""
    names = [layer.name for layer in model.layers]
    return names.index(HEAD) if HEAD in names else len(names)


def backbone_variables(model):
    """The trainable variables of the backbone's layers, by their paths."""
    return [v for layer in model.layers[: head_start(model)] for v in layer.trainable_weights]


def freeze_backbone(model, frozen, *, batch_norm_frozen=True):
    """Set the backbone's layers trainable or not. Batch norm stays frozen with `batch_norm_frozen`
    (in Keras a non-trainable BatchNormalization runs in inference mode: the Keras fine-tuning guide
    keeps it so, since batches of a few dozen images make poor statistics)."""
    for layer in model.layers[: head_start(model)]:
        is_batch_norm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = not frozen and not (is_batch_norm and batch_norm_frozen)


def head_summary(start, change):
    """The header line's words for what started from where, e.g. `from cifar10 weights, new head: 10 -> 2 classes`."""
    words = f"from {start.spec} weights" if start.kind == "released" else f"from {start.kind} {start.file}"
    if change["classes"]:
        before, after = change["classes"]
        words += f", new head: {before if before is not None else '?'} -> {after} classes"
    else:
        words += ", head kept"
    if change.get("channels"):
        words += ", first convolution adapted: {} -> {} channels".format(*change["channels"])
    others = [name for name in change["new"] if name != "predictions"]
    return words + (f" ({', '.join(others)} new: another image size)" if others else "")
