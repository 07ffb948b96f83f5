"""What the commands take as a model: a registered name (with released weights or a weights file),
a `.keras` file, or a run folder holding `model.keras`; and the class names that go with it. `predict`
and `eval` also take the deployed files (`load_classifier`: a `.tflite` file, a SavedModel folder)."""

import json
import pathlib
import sys
import zipfile

import keras
import numpy as np

from zoo import pretrained
from zoo.evaluation import probabilities
from zoo.litert import TFLiteModel
from zoo.mobile import packed_labels
from zoo.recipe import tomllib
from zoo.models import get_model, model_info


def load_model(source, weights=None):
    """`(model, class names or None)` for `source`: a run folder, a `.keras` file, or a registered
    model name built with `weights` (a released tag such as "cifar10", a weights file, or "none" for
    a random initialisation, which must be asked for: a name alone is an error naming the choices)."""
    path = pathlib.Path(source)
    if path.is_dir() and (path / "model.keras").is_file():  # a run folder
        path = path / "model.keras"
    if path.is_file():
        if weights:
            raise ValueError(f"`weights` applies to a model name, not to a model file ({path}). Received: weights={weights!r}")
        results = run_results(path)
        unfinished = run_progress(path) if results is None else None
        if unfinished:
            print(f"note: run not finished ({unfinished}): using its best checkpoint so far", file=sys.stderr, flush=True)
        return load_keras_file(path), find_labels(path) or (results["data"]["class_names"] if results else None)
    if path.is_dir():
        raise FileNotFoundError(f"{source} is a folder without model.keras, not a run folder")
    if path.suffix or len(path.parts) > 1:  # model names have neither
        raise FileNotFoundError(f"No such model file or run folder: {source}")
    name, colon, tag = source.partition(":")
    if colon and not weights:  # benchmarks/paired.py's NAME:TAG
        raise ValueError(f"'{source}' is not a model name: commands take the weights apart, as `{name} --weights {tag}`.")
    info = model_info(source)  # a registered name, else an error listing them
    if not weights:
        released = ", ".join(info.weights)
        raise ValueError(
            f"'{source}' is a model name: say which weights with --weights: "
            + (f"a released tag ({released}), " if released else "")
            + f"a .weights.h5 or .keras file, or {pretrained.NONE} for untrained random weights."
        )
    model = get_model(source, weights=None if weights == pretrained.NONE else weights)
    return model, pretrained.card(source, weights)["data"]["classes"] if pretrained.is_tag(weights) else None


def run_results(source):
    """The results.json of the run folder `source` (or of the run folder holding the .keras file `source`), if any."""
    path = pathlib.Path(source)
    results = (path if path.is_dir() else path.parent) / "results.json"
    return json.loads(results.read_text()) if results.is_file() else None


def test_images_for(source, input_shape, data_dir, weights=None):
    """`(Split, class names, part)`: the test images of `data_dir` at the model's `input_shape` (height, width,
    channels), and of a run folder's own test part where its run split one folder of class folders (results.json
    says how)."""
    from zoo.data import load_test_images

    results = run_results(source) if weights is None else None  # a released tag has no run of its own
    split = (results or {}).get("data", {}).get("split")
    height, width, channels = input_shape
    return load_test_images(data_dir, (height, width), channels, split)


def training_recipe(source, weights=None):
    """The recipe `source` was trained with: a released tag's, or the `recipe.toml` of the run or release folder
    that is or holds `source` (a `.keras`, `.tflite` or SavedModel inside one); None where there is none."""
    if pretrained.is_tag(weights):
        card = pretrained.card(source, weights)
        recipe = pathlib.Path(card["folder"]) / card["recipe"]["file"]
    else:
        path = pathlib.Path(source)
        if not path.exists():  # a registered name with a weights file
            return None
        recipe = (path if path.is_dir() else path.parent) / "recipe.toml"
    try:
        return tomllib.loads(recipe.read_text())
    except (OSError, ValueError):
        return None


def trained_with_flips(source, weights=None):
    """Whether the model was trained on mirrored images (its recipe's augment.flip), for a released tag, a run
    folder or a .keras file in one; None where no recipe says."""
    try:
        return bool(training_recipe(source, weights)["augment"]["flip"])
    except (KeyError, TypeError):
        return None


def trained_on(source, weights=None, default="cifar10"):
    """The tensorflow-datasets name the model was trained on (its recipe's data.source), else `default`: what
    `zoo eval` measures without --data-dir, so `zoo eval lenet5 --weights mnist` reads MNIST."""
    try:
        return str(training_recipe(source, weights)["data"]["source"])
    except (KeyError, TypeError):
        return default


def run_progress(model_path):
    """"epoch E/N" for a `model.keras` in a run folder that has no results.json yet (training, or
    stopped); None for anything else."""
    folder = pathlib.Path(model_path).parent
    state, recipe = folder / "state.json", folder / "recipe.toml"
    if (folder / "results.json").exists() or not state.is_file() or not recipe.is_file():
        return None
    try:
        epoch = json.loads(state.read_text()).get("epoch", 0)
        epochs = tomllib.loads(recipe.read_text())["training"]["epochs"]
    except (ValueError, KeyError):
        return "epoch ?"
    return f"epoch {epoch}/{epochs}"


def load_keras_file(path, compile=False):
    """`keras.saving.load_model(path)`, with a one-line ValueError naming the file when it is not a
    model Keras can read (Keras itself says "File not found" for a corrupt file)."""
    path = pathlib.Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .keras model file: it is not the zip archive Keras writes (corrupt or truncated?).")
    try:
        return keras.saving.load_model(path, compile=compile)
    except (ValueError, KeyError, OSError, TypeError, zipfile.BadZipFile) as e:
        raise ValueError(f"Cannot load {path} as a Keras model: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def read_labels(path):
    """Class names from a text file, one per line; a ValueError naming the path when it is not one."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise ValueError(f"Labels file {path} is a folder: give a text file with one class name per line.")
    if not path.is_file():
        raise FileNotFoundError(f"No such labels file: {path}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"Labels file {path} is not UTF-8 text: give a text file with one class name per line.") from None


def find_labels(model_path):
    """Class names from the labels.txt beside a model (or beside its SavedModel folder), if any."""
    path = pathlib.Path(model_path)
    for folder in (path.parent, path.parent.parent) if path.is_file() else (path.parent, path):
        if (folder / "labels.txt").is_file():
            return read_labels(folder / "labels.txt")
    return None


class SavedModelClassifier:
    """A SavedModel written by `to_saved_model`, called through its uint8 `serving_default` signature."""

    def __init__(self, path):
        import tensorflow as tf

        self.serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        self.input_shape = tuple(self.serve.structured_input_signature[1]["image"].shape[1:])
        self.num_classes = int(self.serve.structured_outputs["probabilities"].shape[-1])

    def predict(self, images):
        return self.serve(image=np.asarray(images, "uint8"))["probabilities"].numpy().astype("float64")


class KerasClassifier:
    """A Keras model with the deployed files' interface: `predict(uint8 images)` -> float probabilities."""

    def __init__(self, model):
        self.model = model
        self.input_shape = tuple(self.model.input.shape[1:])
        self.num_classes = int(self.model.output.shape[-1])

    def predict(self, images):
        return probabilities(self.model, np.asarray(images, "float32"))


def load_classifier(source, weights=None, num_threads=None):
    """`(classifier, class names or None)`; the classifier has `input_shape` and `predict(images)`.

    `source`: a `.tflite` file, a SavedModel folder, or what `load_model` takes (a
    `.keras` file, a run folder, a registered model name with `weights`).
    """
    path = pathlib.Path(source)
    if not weights:
        if path.suffix == ".tflite" and path.is_file():
            return TFLiteModel(path, num_threads=num_threads), find_labels(path) or packed_labels(path)
        if (path / "saved_model.pb").is_file():
            return SavedModelClassifier(path), find_labels(path)
    model, class_names = load_model(source, weights=weights)
    return KerasClassifier(model), class_names


def load_images(paths, input_shape):
    """Decode image files of any common format, resized to `input_shape` [H, W, C], as uint8."""
    from zoo.data import read_image

    height, width, channels = input_shape
    return np.stack([read_image(path, (height, width), channels) for path in paths])
