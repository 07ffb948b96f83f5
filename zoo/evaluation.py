"""Accuracy, loss, per-class accuracy and confusion matrix of a model; what it ran on."""

import os
import platform
import sys

import numpy as np

import keras

from zoo import keras_input


def outputs_probabilities(model):
    """Whether the model ends in a softmax (else it outputs logits)."""
    return model.layers[-1].get_config().get("activation") == "softmax"


def probabilities(model, images, *, tta_flip=False, tta_shift=0, batch_size=256):
    """Class probabilities (float64) for raw 0-255 images, whether the model ends in logits or a
    softmax; with `tta_flip`, averaged with those of the mirrored images; with `tta_shift` (pixels),
    each of those views also shifted up-left and down-right by that much (black edges, as the
    training crops pad), the multi-view test-time augmentation of the fast-CIFAR work."""

    def run(batch):
        data, keras_batch = keras_input.arrays_input(batch, batch_size)
        outputs = np.asarray(model.predict(data, batch_size=keras_batch, verbose=0), "float64")
        if outputs_probabilities(model):
            return outputs
        exp = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    return averaged_over_views(run, images, tta_flip=tta_flip, tta_shift=tta_shift)


def averaged_over_views(predict, images, *, tta_flip=False, tta_shift=0):
    """`predict(images)` (probabilities), averaged over the views `probabilities` describes."""
    views = [images, images[:, :, ::-1]] if tta_flip else [images]
    if tta_shift:
        views += [shifted(view, dy * tta_shift, dx * tta_shift) for view in views[:] for dy, dx in ((-1, -1), (1, 1))]
    return sum(predict(view) for view in views) / len(views)


def shifted(images, dy, dx):
    """`images` [N, H, W, C] moved by `dy`, `dx` pixels, the uncovered edge black."""
    out = np.zeros_like(images)
    height, width = images.shape[1:3]
    out[:, max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = images[:, max(-dy, 0) : height - max(dy, 0), max(-dx, 0) : width - max(dx, 0)]
    return out


def check_classes(model, class_names, model_class_names=None, source="the data"):
    """A ValueError unless `class_names` (of the data in `source`) are the model's classes: as many as
    its outputs and, where the model's own names are known, the same names in the same order."""
    outputs = model.output.shape[-1] if isinstance(model, keras.Model) else model.num_classes
    if len(class_names) != outputs:
        raise ValueError(
            f"{source} has {len(class_names)} classes ({', '.join(class_names)}), but the model has {outputs} outputs."
        )
    if model_class_names is not None and list(model_class_names) != list(class_names):
        raise ValueError(
            f"The classes of {source} ({', '.join(class_names)}) are not the model's ({', '.join(model_class_names)}), "
            "in that order: its accuracy would be measured against the wrong labels."
        )


def evaluate(model, split, class_names, *, tta_flip=False, tta_shift=0, batch_size=256):
    """Accuracy, cross-entropy, per-class accuracy and confusion matrix (rows: true, columns: predicted) of a
    Keras model, or of a deployed file's classifier (`zoo.loading.load_classifier`: TFLite, SavedModel)."""
    check_classes(model, class_names)
    if isinstance(model, keras.Model):
        probs = probabilities(model, split.images, tta_flip=tta_flip, tta_shift=tta_shift, batch_size=batch_size)
    else:
        probs = averaged_over_views(model.predict, split.images, tta_flip=tta_flip, tta_shift=tta_shift)
    log_probs = np.log(np.clip(probs, 1e-12, 1.0))
    labels = split.labels
    predicted = probs.argmax(axis=1)
    confusion = np.zeros((len(class_names), len(class_names)), "int64")
    np.add.at(confusion, (labels, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {
        "accuracy": float((predicted == labels).mean()),
        "loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
        "per_class_accuracy": {name: float(a) for name, a in zip(class_names, per_class)},
        "confusion_matrix": confusion.tolist(),
        "images": int(len(labels)),
        "tta_flip": tta_flip,
        "tta_shift": tta_shift,
    }


def hardware():
    """The CPU and the accelerators Keras sees."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    accelerators = []
    if keras.backend.backend() == "jax":
        import jax

        accelerators = [d.device_kind for d in jax.devices() if d.platform != "cpu"]
    elif keras.backend.backend() == "torch":
        import torch

        accelerators = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        accelerators = [
            tf.config.experimental.get_device_details(d).get("device_name", d.name)
            for d in tf.config.list_physical_devices("GPU")
        ]
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "accelerators": accelerators, "platform": platform.platform()}


def versions():
    """Versions of Python, Keras, its backend, NumPy and zoo."""
    import zoo

    backend = keras.backend.backend()
    backend_module = sys.modules.get({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend, backend))
    return {
        "python": platform.python_version(),
        "zoo": zoo.__version__,
        "keras": keras.__version__,
        "backend": backend,
        "backend_version": getattr(backend_module, "__version__", None),
        "numpy": np.__version__,
    }
