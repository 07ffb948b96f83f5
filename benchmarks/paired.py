"""Two models on the same test images, paired: each one's top-1 and their difference with its standard error.

    python benchmarks/paired.py runs/a runs/b --data-dir ../shared/data/cifar10
    python benchmarks/paired.py runs/gpu/reference_vgg16_bn.json runs/gpu/vgg16_bn_cifar10 --data-dir ../shared/data/cifar10
    python benchmarks/paired.py vgg16_bn:cifar10 runs/gpu/vgg16_bn_cifar10 --data-dir ../shared/data/cifar10

Each side is a zoo run folder, a `.keras` file or released weights (`NAME:TAG`), by its plain predictions
on the test images as `zoo eval --data-dir` takes them, or a `torch_reference.py` report (the predictions
it kept, checked against the same labels). On the same n images the difference of two accuracies has the standard error
sqrt(n01 + n10) / n, where n01 and n10 count the images only one of the two gets right (McNemar's view):
far below the unpaired one, as most images are right, or wrong, for both.
"""

import argparse
import json
import math
import os
import pathlib
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def paired_difference(right_a, right_b):
    """`(B - A, its standard error, the share of images where they disagree)` in points, from two
    boolean arrays: which of the same images each gets right."""
    right_a, right_b = np.asarray(right_a, bool), np.asarray(right_b, bool)
    only_b, only_a, n = int((right_b & ~right_a).sum()), int((right_a & ~right_b).sum()), len(right_a)
    return 100 * (only_b - only_a) / n, 100 * math.sqrt(only_a + only_b) / n, 100 * (only_a + only_b) / n


def predictions(side, data_dir):
    """`(predicted classes, labels)` of `side` on the test images of `data_dir`."""
    if side.endswith(".json"):
        report = json.loads(pathlib.Path(side).read_text())
        if "test_predictions" not in report:
            raise SystemExit(f"{side} keeps no per-image predictions: a torch_reference.py report from before they were kept.")
        if report.get("stopped"):
            print(f"{side}: stopped {report['stopped']}, with its schedule not run out: not an equal-epoch figure")
        return np.array(report["test_predictions"]), np.array(report["test_labels"])
    from zoo.evaluation import check_classes, probabilities
    from zoo.loading import load_model, test_images_for

    name, _, tag = side.partition(":") if ":" in side and not os.path.exists(side) else (side, "", None)
    model, class_names = load_model(name, weights=tag)
    test, data_classes, _ = test_images_for(name, model.input.shape[1:], data_dir, tag)  # as zoo eval --data-dir takes them
    check_classes(model, data_classes, class_names, data_dir)
    return probabilities(model, test.images).argmax(axis=1), test.labels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="a run folder, a .keras file, released weights (NAME:TAG) or a torch_reference.py --json report")
    parser.add_argument("b", help="the same kinds; the difference is B - A")
    parser.add_argument("--data-dir", required=True, help="the image folders both were tested on (train/ and test/, as zoo eval takes them)")
    args = parser.parse_args(argv)
    (predicted_a, labels_a), (predicted_b, labels_b) = (predictions(side, args.data_dir) for side in (args.a, args.b))
    if len(labels_a) != len(labels_b) or (labels_a != labels_b).any():
        raise SystemExit(f"{args.a} ({len(labels_a):,} images) and {args.b} ({len(labels_b):,}) were not tested on the same images in the same order.")
    right_a, right_b = predicted_a == labels_a, predicted_b == labels_b
    difference, error, disagree = paired_difference(right_a, right_b)
    print(f"A {args.a}: {right_a.mean():.2%}\nB {args.b}: {right_b.mean():.2%}  ({len(labels_a):,} test images)")
    print(f"B - A: {difference:+.2f} ± {error:.2f} points, paired ({disagree:.1f}% of the predictions differ)")
    return difference, error


if __name__ == "__main__":
    main()
