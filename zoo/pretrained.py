"""Released weights: the model cards in `saved_models/`, and what `weights="cifar10"` needs from them.

Each release is a folder `saved_models/<model>_<tag>/` holding `model_card.json` (written by
`zoo release`), the float16 Keras weights, the TFLite files and their `export.json`. A card records
the builder options the weights were trained with; `resolve_options` merges them with a caller's
options the way torchvision merges a weights enum's meta. Keras-free: the registry imports it.
"""

import json
import os
import pathlib
import re

from zoo.files import sha256, shipped_folder

SAVED_MODELS_DIR = shipped_folder("saved_models")
CARD = "model_card.json"
TAG = re.compile(r"[a-z0-9][a-z0-9_-]*")  # a weights tag such as "cifar10"; anything else is a path
NONE = "none"  # what commands and recipes take for random weights (keras.applications' weights=None)
# Options that only shape the classifier head: free to differ when the head is not built.
HEAD_OPTIONS = ("num_classes", "fc_units", "dropout")
# Options without weights of their own: the caller's value wins (e.g. more dropout for fine-tuning).
FREE_OPTIONS = ("dropout",)


def is_tag(weights):
    """Whether a `weights` argument names released weights (a tag such as "cifar10"), not a file or "none"."""
    return isinstance(weights, str) and weights != NONE and bool(TAG.fullmatch(weights)) and not os.path.exists(weights)


def saved_models_dir():
    """`$ZOO_SAVED_MODELS`, else the shipped `saved_models/` (in the checkout, or bundled in a wheel)."""
    return pathlib.Path(os.environ.get("ZOO_SAVED_MODELS", SAVED_MODELS_DIR))


def cards():
    """Every model card, keyed by `(model, weights tag)`."""
    found = {}
    for path in sorted(saved_models_dir().glob(f"*/{CARD}")):
        card = json.loads(path.read_text())
        card["folder"] = str(path.parent)
        found[(card["model"], card["weights"])] = card
    return found


def released_models():
    """Sorted names of models with released weights."""
    return sorted({model for model, _ in cards()})


def card(model, tag):
    """The card of `model`'s weights `tag`; a ValueError naming the models that have such weights."""
    all_cards = cards()
    if (model, tag) not in all_cards:
        having = sorted(m for m, t in all_cards if t == tag)
        tags = sorted({t for m, t in all_cards if m == model})
        raise ValueError(
            f"No released weights {tag!r} for '{model}'. "
            + (f"Its released weights: {', '.join(tags)}. " if tags else "")
            + (f"Models with {tag!r} weights: {', '.join(having)}. " if having else f"No model has {tag!r} weights in {saved_models_dir()}. ")
            + _imagenet_hint(model, tag)
            + "Pass weights=None for a random initialisation, or the path of a weights file. "
            f"Received: weights={tag!r}"
        )
    return all_cards[(model, tag)]


def _imagenet_hint(model, tag):
    """What a keras.applications user asking for `weights="imagenet"` can do instead."""
    if tag != "imagenet":
        return ""
    if model not in ("vgg16", "vgg19"):
        return "zoo releases no ImageNet weights; keras.applications has them for VGG16 and VGG19 only. "
    app = model.upper()
    return (
        f"keras.applications has them, and zoo's paper-sized {model} is its {app} layer for layer: "
        f"model = {model}(input_shape=(224, 224, 3), num_classes=1000, fc_units=(4096, 4096), include_preprocessing=False, "
        f'classifier_activation="softmax"); model.set_weights(keras.applications.{app}(weights="imagenet").get_weights()); '
        f"feed it keras.applications.{model}.preprocess_input(images). "
    )


def weights_file(card):
    """The card's Keras weights file, after checking its sha256 against the card."""
    entry = card["files"][card["keras_weights"]]
    path = pathlib.Path(card["folder"]) / card["keras_weights"]
    if not path.is_file():
        raise FileNotFoundError(f"Released weights file {path} is missing (listed in {card['folder']}/{CARD}).")
    digest = sha256(path)
    if digest != entry["sha256"]:
        raise ValueError(
            f"Released weights file {path} is corrupt or was changed: sha256 {digest}, its card says {entry['sha256']}."
        )
    return path


def resolve_options(card, options):
    """The builder options for loading `card`'s weights: the caller's, completed with the card's.

    An option the caller sets to another value than the card's is an error, except `dropout` (no
    weights depend on it) and, with `include_top=False`, the head's options and the input's size.
    """
    include_top = options.get("include_top", True)
    resolved = dict(options)
    for key, value in card["options"].items():
        if not include_top and key in HEAD_OPTIONS:
            continue
        if key not in options:
            resolved[key] = value
        elif key in FREE_OPTIONS or _same(key, options[key], value, include_top):
            continue
        elif key == "input_shape" and _channels(options[key]) not in (None, value[-1]):
            given, released = _channels(options[key]), value[-1]
            raise ValueError(
                f"`input_shape` conflicts with the released weights {card['weights']!r} of '{card['model']}', which take "
                f"{released} channel{'s' * (released != 1)} ({COLOURS.get(released, '?')}): no input_shape with another channel count "
                f"loads them, with or without the head. Leave it unset; to train on {COLOURS.get(given, 'such')} images, fine-tune "
                f"from them (zoo train ... --set model.weights={card['weights']} --set data.channels={given}), which adapts the first "
                f"convolution. Received: input_shape={options[key]!r}"
            )
        else:
            raise ValueError(
                f"`{key}` conflicts with the released weights {card['weights']!r} of '{card['model']}', "
                f"which were trained with {key}={_plain(value)!r}. Leave it unset"
                + (" (or pass include_top=False to use only the convolutional blocks)" if key in HEAD_OPTIONS or key == "input_shape" else "")
                + f". Received: {key}={options[key]!r}"
            )
    return resolved


def _same(key, given, released, include_top):
    if key == "input_shape" and not include_top:  # conv weights fit any image size, not another channel count
        return isinstance(given, (tuple, list)) and len(given) == 3 and given[-1] == released[-1]
    return _plain(given) == _plain(released)


COLOURS = {1: "greyscale", 3: "RGB"}  # by channel count


def _channels(shape):
    return shape[-1] if isinstance(shape, (tuple, list)) and len(shape) == 3 else None


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def results_table():
    """A Markdown table of every release, generated from the model cards (timm's results CSV, as Markdown)."""
    rows = []
    for (model, tag), c in cards().items():
        training, accuracy, int8 = c["training"], c["accuracy"], c["int8"]
        rows.append([
            model, tag, f"{c['params'] / 1e6:.2f}M", f"{c['macs'] / 1e6:.1f}M",
            _pct(accuracy["test_top1"]), _pct(accuracy.get("test_top1_flip_tta")), _pct(accuracy.get("test_top1_multi_view_tta")),
            _pct(int8["test_top1"]), f"{int8['bytes'] / 2**20:.2f} MiB",
            str(training["epochs"]), f"{training['train_seconds'] / 60:.1f} min", training["hardware_summary"],
        ])
    columns = ["model", "weights", "params:", "MACs:", "test top-1:", "+ flip TTA:", "multi-view TTA:", "int8 top-1:", "int8 size:", "epochs:", "train time:", "hardware"]
    return _markdown(columns, rows)


def deploy_table():
    """A Markdown table of every released TFLite file, from the releases' `export.json`: what an app gets."""
    rows = []
    for (model, tag), c in cards().items():
        record = json.loads((pathlib.Path(c["folder"]) / "export.json").read_text())
        for variant, entry in record["variants"].items():
            litert, mediapipe, check = entry.get("litert_cpu", {}), entry.get("mediapipe", {}), entry["verification"]
            rows.append([
                f"{model} ({tag})", variant, f"{entry['bytes'] / 2**20:.2f} MiB",
                f"{litert['median_ms']:.2f} ms" if litert else "-",
                {True: "yes", False: "no"}.get(litert.get("fully_accelerated"), "-"),
                {True: "yes", False: "no"}.get(mediapipe.get("passed"), "-"),
                _pct(check["accuracy"]), _pct(check["agreement"]),
            ])
    columns = ["model", "variant", "size:", "latency, 1 thread:", "fully delegated (LiteRT CPU)", "MediaPipe", "test top-1:", "agreement with Keras:"]
    return _markdown(columns, rows)


def _markdown(columns, rows):
    """A Markdown table; a column name ending in ":" is right-aligned (the colon is not shown)."""
    header = "| " + " | ".join(c.rstrip(":") for c in columns) + " |\n"
    rule = "| " + " | ".join("---:" if c.endswith(":") else "---" for c in columns) + " |\n"
    return header + rule + "".join("| " + " | ".join(row) + " |\n" for row in rows)


def _pct(value):
    return "-" if value is None else f"{100 * value:.2f}%"
