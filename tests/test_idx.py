"""MNIST-family idx files as `--data-dir`: read as distributed, fitted to the model input, bad files named."""

import gzip
import json
import re
import shutil

import numpy as np
import pytest

from zoo import idx, mobile
from zoo.data import load_dataset, load_image_folder_split


def test_the_real_mnist_files_read_as_distributed(mnist_dir):
    images, labels, names = idx.load_split(mnist_dir, "train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8 and labels.shape == (60000,)
    assert names == [str(i) for i in range(10)] and set(np.unique(labels)) == set(range(10))
    assert images.mean() == pytest.approx(33.3, abs=1.0)  # white digits on black: mostly black
    test, test_labels, _ = idx.load_split(mnist_dir, "test")
    assert test.shape == (5000, 28, 28) and np.bincount(test_labels).min() > 400


def test_a_digit_is_placed_in_the_middle_of_a_larger_field_as_lenet5s_paper_does(mnist_dir):
    images, _, _ = idx.load_split(mnist_dir, "test")
    padded = idx.fit(images[:5], (32, 32), 1)
    assert padded.shape == (5, 32, 32, 1)
    np.testing.assert_array_equal(padded[:, 2:30, 2:30, 0], images[:5])
    assert padded[:, :2].max() == padded[:, 30:].max() == padded[:, :, :2].max() == 0
    rgb = idx.fit(images[:2], (32, 32), 3)
    assert rgb.shape == (2, 32, 32, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])
    assert idx.fit(images[:2], (14, 14), 1).shape == (2, 14, 14, 1)  # smaller: resized
    dataset = load_dataset(data_dir=mnist_dir, image_size=(32, 32), channels=1, validation_size=5000, limit=100)
    assert dataset.split["layout"] == "idx files, train and test" and dataset.train.images.shape == (100, 32, 32, 1)
    split, names = load_image_folder_split(mnist_dir, "test", (32, 32), 1)
    assert len(split) == 5000 and names[9] == "9"


def make_idx(folder, images, labels, gz=True, prefix=("train", "t10k")):
    folder.mkdir(parents=True, exist_ok=True)
    for split in prefix:
        for kind, array in (("images", images), ("labels", labels)):
            raw = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + array.astype(np.uint8).tobytes()
            name = f"{split}-{kind}-idx{array.ndim}-ubyte"
            (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return folder


def test_plain_idx_files_and_class_names_from_classes_txt(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), np.array([0, 1, 2, 0, 1, 2])
    folder = make_idx(tmp_path / "plain", images, labels, gz=False)
    (folder / "classes.txt").write_text("T-shirt\nTrouser\nPullover\n")
    got, got_labels, names = idx.load_split(folder, "test")
    np.testing.assert_array_equal(got, images)
    assert got_labels.tolist() == labels.tolist() and names == ["T-shirt", "Trouser", "Pullover"]


def test_a_cut_or_mismatched_idx_file_is_one_line_naming_it(mnist_dir, tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), np.arange(6) % 3
    folder = make_idx(tmp_path / "cut", images, labels, gz=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=rf"{path} is cut short or has bytes to spare: its header announces 6 x 28 x 28 values \(4,704 bytes\), the file holds 4,604 bytes"):
        idx.load_split(folder, "train")
    gz = tmp_path / "gz" / "t10k-images-idx3-ubyte.gz"
    gz.parent.mkdir()
    shutil.copy(mnist_dir / "t10k-labels-idx1-ubyte.gz", gz.parent)
    gz.write_bytes((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes()[:5000])
    with pytest.raises(ValueError, match=rf"Cannot read idx file {gz}: "):
        idx.load_split(gz.parent, "test")
    folder = make_idx(tmp_path / "mismatch", images, labels[:5])
    with pytest.raises(ValueError, match="holds 6 images but .*train-labels-idx1-ubyte.gz 5 labels: they must match one to one"):
        idx.load_split(folder, "train")
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="Cannot read idx file .*t10k-labels-idx1-ubyte.gz"):
        idx.load_split(folder, "test")
    folder = make_idx(tmp_path / "names", images, labels)
    (folder / "classes.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"has label 2, but there are 2 class names \(classes.txt\)"):
        idx.load_split(folder, "train")
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(ValueError, match=r"holds 0 test images files \(none\): expected one named \*t10k-images-idx3-ubyte\[.gz\] or test-images"):
        idx.load_split(folder, "test")


def test_a_greyscale_lenet5_trains_on_the_idx_files_and_names_digits(mnist_dir, cifar10_dir, tmp_path, capsys):
    from zoo.cli import main
    from zoo.loading import load_model

    run = tmp_path / "run"
    args = ["train", "lenet5_cifar10", "--data-dir", str(mnist_dir), "--out", str(run), "--epochs", "2", "--set", "data.channels=1",
            "--set", "augment.flip=false", "--set", "training.tta_flip=false", "--set", "data.limit=3000", "--set", "data.validation_size=1000"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"lenet5 (61,794 params, float32) on {mnist_dir.resolve()}: 3,000 train / 1,000 validation / 3,000 test images" in out
    model, names = load_model(str(run))
    assert model.input.shape[1:] == (32, 32, 1) and names == [str(i) for i in range(10)]
    results = json.loads((run / "results.json").read_text())
    assert results["test_accuracy"] > 0.2 and results["data"]["split"]["layout"] == "idx files, train and test"
    assert main(["predict", str(run), str(cifar10_dir / "test" / "cat" / "0000.jpg"), "--top", "1"]) == 0  # an RGB file: converted
    assert re.search(r"^  1\. [0-9] +0\.\d{4}$", capsys.readouterr().out, re.M)
    assert main(["eval", str(run), "--data-dir", str(mnist_dir), "--limit", "300"]) == 0
    assert f"on {mnist_dir}, its test idx files (300 images)" in capsys.readouterr().out
    assert main(["eval", str(run), "--data-dir", str(mnist_dir), "--limit", "300", "--tta-flip"]) == 0
    assert f"note: {run} was trained without mirrored images (augment.flip = false)" in capsys.readouterr().err
    assert main(["train", "lenet5_cifar10", "--set", "data.channels=2", "--out", str(tmp_path / "bad")]) == 2
    assert "data.channels must be 1 (greyscale) or 3 (RGB)" in capsys.readouterr().err
    # Its TFLite file takes RGB like every zoo file (MediaPipe refuses one channel): the grey is made inside.
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out), "--formats", "tflite", "--quantize", "float32",
                 "--calibration-data", str(mnist_dir), "--verify-images", "300"]) == 0
    entry = json.loads((out / "export.json").read_text())["variants"]["float32"]
    assert entry["input"]["shape"] == [1, 32, 32, 3] and entry["verification"]["agreement"] == 1.0
    assert entry["mediapipe"]["loads"] and entry["mediapipe"]["class_names_from_file"] and entry["mediapipe"]["agreement_with_interpreter"] == 1.0
    assert entry["litert_cpu"]["fully_accelerated"]
    assert "made grey inside" in mobile.read_metadata(out / "model_float32.tflite")["description"]


def mixed_files(digits, labels, root, per_class):
    """MNIST digits written as a user's folder might hold them: every mode Pillow meets (grey, grey with
    alpha, 16-bit grey, 1-bit, palette, RGB, RGBA, CMYK) and sizes other than 28x28."""
    from PIL import Image

    writers = [
        lambda d: (Image.fromarray(d), "png"),
        lambda d: (Image.fromarray(d).convert("LA"), "png"),
        lambda d: (Image.fromarray(d.astype("uint16") * 257), "png"),  # mode I;16
        lambda d: (Image.fromarray(d).point(lambda v: 255 if v > 127 else 0).convert("1"), "bmp"),
        lambda d: (Image.fromarray(d).convert("P"), "gif"),
        lambda d: (Image.fromarray(d).convert("RGB").resize((40, 40)), "jpg"),
        lambda d: (Image.fromarray(d).convert("RGBA").resize((56, 56)), "webp"),
        lambda d: (Image.fromarray(d).convert("CMYK").resize((20, 20)), "jpg"),
    ]
    for split, count in per_class.items():
        for digit in range(3):
            folder = root / split / str(digit)
            folder.mkdir(parents=True)
            picked = np.flatnonzero(labels == digit)[: count] if split == "train" else np.flatnonzero(labels == digit)[-count:]
            for n, i in enumerate(picked):
                image, suffix = writers[n % len(writers)](digits[i])
                image.save(folder / f"{i}.{suffix}")
    return root


def test_a_digit_model_fine_tunes_on_a_folder_of_mixed_modes_and_sizes_and_is_visualised(mnist_dir, tmp_path, capsys):
    """lenet5's MNIST weights fine-tuned on a 3-class folder of digits in eight modes and four sizes
    (handled, not an error), then `zoo viz` on the run: single-channel filter tiles and Grad-CAM."""
    from zoo import viz
    from zoo.cli import main
    from zoo.loading import load_model

    digits, labels, _ = idx.load_split(mnist_dir, "test")
    folder = mixed_files(digits, labels, tmp_path / "digits", {"train": 40, "test": 16})
    run = tmp_path / "run"
    assert main(["train", "lenet5_mnist", "--data-dir", str(folder), "--out", str(run), "--epochs", "4", "--set", "model.weights=mnist",
                 "--set", "data.batch_size=16", "--set", "data.validation_size=12"]) == 0
    out = capsys.readouterr().out
    assert "float32; from mnist weights, new head: 10 -> 3 classes) on " in out and ": 108 train / 12 validation / 48 test images" in out
    results = json.loads((run / "results.json").read_text())
    assert results["test_accuracy"] >= 0.9, results["test_accuracy"]
    model, names = load_model(str(run))
    assert names == ["0", "1", "2"] and viz.filters(model).shape == (6, 5, 5, 1)
    image = next((folder / "test" / "2").glob("*.gif"))
    assert main(["viz", str(run), "--image", str(image), "--filters", "--out", str(tmp_path / "viz")]) == 0
    assert {"filters.png", "grad_cam.png", "index.html"} <= {p.name for p in (tmp_path / "viz").iterdir()}
    cam, layer = viz.grad_cam_and_layer(model, viz.load_image(image, model), class_index=2)
    assert cam.shape == (32, 32) and cam.max() > 0 and (cam > 0.5).mean() < 0.5, layer  # a map with a place in it


def test_flip_tta_on_a_model_trained_without_flips_says_so(mnist_dir, cifar10_dir, capsys):
    from zoo.cli import main

    assert main(["eval", "lenet5", "--weights", "mnist", "--data-dir", str(mnist_dir), "--limit", "200", "--tta-flip"]) == 0
    assert "note: lenet5(weights='mnist') was trained without mirrored images (augment.flip = false): --tta-flip" in capsys.readouterr().err
    assert main(["eval", "lenet5", "--weights", "cifar10", "--data-dir", str(cifar10_dir), "--limit", "200", "--tta-flip"]) == 0
    assert "note:" not in capsys.readouterr().err
