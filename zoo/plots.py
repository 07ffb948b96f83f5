"""PNG plots of a run: loss/accuracy curves and the confusion matrix (matplotlib, no display needed)."""

import csv
import pathlib

import numpy as np


def pyplot():
    """`matplotlib.pyplot` on the Agg backend: figures are written to files, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def history_curves(history_csv, path):
    """Train/validation loss and accuracy per epoch, from a Keras CSVLogger file."""
    plt = pyplot()
    with open(history_csv) as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            if rows and rows[0].get(f"{prefix}{metric}", "NA") != "NA":  # Keras' CSVLogger writes NA without validation
                ax.plot(epochs, [float(r[f"{prefix}{metric}"]) for r in rows], marker=".", label=label)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def confusion_matrix(matrix, class_names, path):
    """Row-normalised confusion matrix with the counts written in each cell."""
    plt = pyplot()
    matrix = np.asarray(matrix)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(5, 0.6 * len(class_names))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted", ylabel="true", title=f"test confusion matrix (accuracy {np.trace(matrix) / max(matrix.sum(), 1):.4f})")
    if len(class_names) <= 20:
        for i in ticks:
            for j in ticks:
                ax.text(j, i, matrix[i, j], ha="center", va="center", fontsize=7, color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    _save(fig, path)


def _save(fig, path):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
