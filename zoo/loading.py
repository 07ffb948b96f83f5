"""What the commands take as a model: a registered name (with released weights or a weights file),
a `.keras` file, or a run folder holding `model.keras`; and the class names that go with it."""

import json
import pathlib

import keras

from zoo import pretrained
from zoo.models import get_model, model_info


def load_model(source, weights=None):
    """`(model, class names or None)` for `source`: a run folder, a `.keras` file, or a registered
    model name built with `weights` (a released tag such as "cifar10", or a weights file)."""
    path = pathlib.Path(source)
    if path.is_dir() and (path / "model.keras").is_file():  # a run folder
        path = path / "model.keras"
    if path.is_file():
        if weights:
            raise ValueError(f"`weights` applies to a model name, not to a model file ({path}). Received: weights={weights!r}")
        results = path.parent / "results.json"
        names = find_labels(path) or (json.loads(results.read_text())["data"]["class_names"] if results.is_file() else None)
        return keras.saving.load_model(path, compile=False), names
    if path.is_dir():
        raise FileNotFoundError(f"{source} is a folder without model.keras, not a run folder")
    if path.suffix or len(path.parts) > 1:  # model names have neither
        raise FileNotFoundError(f"No such model file or run folder: {source}")
    model_info(source)  # a registered name, else an error listing them
    model = get_model(source, weights=weights)
    return model, pretrained.card(source, weights)["data"]["classes"] if pretrained.is_tag(weights) else None


def find_labels(model_path):
    """Class names from the labels.txt beside a model (or beside its SavedModel folder), if any."""
    path = pathlib.Path(model_path)
    for folder in (path.parent, path.parent.parent) if path.is_file() else (path.parent, path):
        if (folder / "labels.txt").is_file():
            return (folder / "labels.txt").read_text().splitlines()
    return None
