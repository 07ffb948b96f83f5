"""Image-folder and tfds sources, the validation split, augmentation and batching."""

import errno
import os
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

import zoo.data as data
from zoo.augment import augment
from zoo.data import Batches, DataUnavailableError, Split, load_dataset


def test_image_folders_decode_real_cifar10(small_cifar10):
    ds = load_dataset(data_dir=small_cifar10, validation_size=400, seed=3)
    assert ds.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (2600, 400, 500)
    assert ds.train.images.shape[1:] == (32, 32, 3) and ds.train.images.dtype == np.uint8
    assert np.bincount(ds.test.labels).tolist() == [50] * 10
    first_cat = np.asarray(Image.open(small_cifar10 / "test" / "cat" / "0000.jpg"))
    assert any(np.array_equal(first_cat, image) for image in ds.test.images[ds.test.labels == 3])


def test_validation_split_is_seeded_and_disjoint(small_cifar10):
    a = load_dataset(data_dir=small_cifar10, validation_size=500, seed=0)
    b = load_dataset(data_dir=small_cifar10, validation_size=500, seed=0)
    c = load_dataset(data_dir=small_cifar10, validation_size=500, seed=1)
    np.testing.assert_array_equal(a.val.images, b.val.images)
    assert not np.array_equal(a.val.images, c.val.images)
    train_keys = {img.tobytes() for img in a.train.images}
    assert not any(img.tobytes() in train_keys for img in a.val.images)


def test_images_are_resized_to_the_model_input(small_cifar10):
    ds = load_dataset(data_dir=small_cifar10, image_size=(40, 48), channels=1, validation_size=10, limit=20)
    assert ds.train.images.shape == (20, 40, 48, 1)


def test_decoded_folders_are_cached_outside_the_data(small_cifar10, monkeypatch, tmp_path):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    first = load_dataset(data_dir=small_cifar10, validation_size=100)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    monkeypatch.setattr(data, "_decode", lambda *a: pytest.fail("decoded again despite the cache"))
    again = load_dataset(data_dir=small_cifar10, validation_size=100)
    np.testing.assert_array_equal(first.train.images, again.train.images)
    assert not list(small_cifar10.rglob("*.npz"))


def test_a_cache_that_cannot_be_written_is_said_in_one_warning_and_the_images_still_load(small_cifar10, monkeypatch, tmp_path, capsys):
    """The cache saves decoding time, nothing more: a full disk or an unusable cache folder must not stop a run."""
    expected = data.load_image_folder_split(small_cifar10, "test", (32, 32))[0]
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ZOO_CACHE_DIR", str(blocker / "cache"))  # mkdir fails, for root too
    split, _ = data.load_image_folder_split(small_cifar10, "test", (32, 32))
    np.testing.assert_array_equal(split.images, expected.images)
    assert f"warning: could not cache the decoded images of {small_cifar10 / 'test'} in {blocker / 'cache'} (Not a directory): going on without it" in capsys.readouterr().err

    def fill_the_disk(path, **arrays):  # part of the file written, then the disk is full
        pathlib.Path(path).write_bytes(b"PK" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_save_npz", fill_the_disk)
    split, _ = data.load_image_folder_split(small_cifar10, "test", (32, 32))
    np.testing.assert_array_equal(split.images, expected.images)
    assert "(no space left on the device): going on without it, decoding again next time" in capsys.readouterr().err
    assert not list((tmp_path / "cache").iterdir())  # no part of a cache file left to be read later


def make_tree(root, train=("a", "b"), test=("a", "b"), images=2):
    for split, classes in (("train", train), ("test", test)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(images):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / split / name / f"{i}.png")
    return root


def test_missing_split_folder(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "test").rename(tmp_path / "testing")
    with pytest.raises(ValueError, match=f"Missing split folder {tmp_path / 'test'}"):
        load_dataset(data_dir=tmp_path, validation_size=1)


def test_a_validation_split_as_large_as_train_names_the_recipe_key(tmp_path, capsys):
    from zoo.cli import main

    make_tree(tmp_path / "data")  # 4 training images
    args = ["train", "lenet5_cifar10", "--data-dir", str(tmp_path / "data"), "--set", "data.validation_size=4", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"zoo train: error: data.validation_size (images carved from train for validation) must be less than the 4 "
        f"training images of {(tmp_path / 'data').resolve()}, leaving some to train on. Received: data.validation_size=4"
    ]
    assert not (tmp_path / "run").exists()


def test_empty_class_folder(tmp_path):
    make_tree(tmp_path)
    for f in (tmp_path / "train" / "b").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=f"Empty class folder {tmp_path / 'train' / 'b'}"):
        load_dataset(data_dir=tmp_path, validation_size=1)


def test_classes_that_differ_between_train_and_test(tmp_path):
    make_tree(tmp_path, test=("a", "c"))
    with pytest.raises(ValueError, match=r"only in train: \['b'\], only in test: \['c'\]"):
        load_dataset(data_dir=tmp_path, validation_size=1)


def test_hidden_and_system_files_and_folders_are_left_out(tmp_path):
    make_tree(tmp_path)
    expected = load_dataset(data_dir=tmp_path, validation_size=1)
    for split in ("train", "test"):
        (tmp_path / split / ".ipynb_checkpoints").mkdir()
        (tmp_path / split / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (tmp_path / split / "a" / "._0.png").write_bytes(b"\0\5\26\7")  # macOS AppleDouble
        (tmp_path / split / "a" / "Thumbs.db").write_bytes(b"\xd0\xcf")
    found = load_dataset(data_dir=tmp_path, validation_size=1)
    assert found.class_names == expected.class_names == ["a", "b"]
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(found, name).images, getattr(expected, name).images)


def test_a_file_that_is_not_an_image(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "train" / "a" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=f"Not an image file: {tmp_path / 'train' / 'a' / 'notes.txt'}"):
        load_dataset(data_dir=tmp_path, validation_size=1)
    (tmp_path / "train" / "a" / "notes.txt").unlink()
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=f"Cannot decode image file {tmp_path / 'train' / 'a' / 'broken.jpg'}"):
        load_dataset(data_dir=tmp_path, validation_size=1)


def test_tfds_source_with_mock_data(monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(data, "network_reachable", lambda hosts: True)  # mock_data downloads nothing
    with tfds.testing.mock_data(num_examples=60):
        ds = load_dataset("cifar10", validation_size=10, seed=0)
    assert len(ds.class_names) == 10  # names come from metadata that mock_data does not load
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50, 10, 60)
    assert ds.train.images.shape[1:] == (32, 32, 3) and ds.train.images.dtype == np.uint8
    assert ds.source == "tfds:cifar10"
    with pytest.raises(ValueError, match=r"Unknown tensorflow-datasets name. Did you mean: .*cifar10.*Received: source='cifar11'$"):
        load_dataset("cifar11")


def test_a_tfds_download_without_network_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """The real tfds download path up to the network (it needs importlib_resources: tensorflow/datasets#11212)."""
    import requests

    from zoo.cli import main

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("no network in this test")

    monkeypatch.setattr(requests.Session, "send", offline)
    monkeypatch.setattr(data, "network_reachable", lambda hosts: True)  # as on a machine whose network fails later
    with pytest.raises(DataUnavailableError, match="could not download 'cifar10'.*no network in this test.*--data-dir DIR"):
        load_dataset("cifar10", tfds_data_dir=str(tmp_path / "tfds"))
    args = ["train", "lenet5_cifar10", "--tfds-data-dir", str(tmp_path / "tfds"), "--epochs", "1", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    assert "zoo train: error: tensorflow-datasets could not download 'cifar10'" in capsys.readouterr().err


def batch_of_distinct_images(n=64, size=8):
    rng = np.random.default_rng(0)
    return rng.integers(1, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_flip_mirrors_about_half_the_images():
    images = batch_of_distinct_images()
    out = augment(images, np.random.default_rng(1), crop_padding=0, flip=True)
    mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
    unchanged = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(m or u for m, u in zip(mirrored, unchanged))
    assert 16 < sum(mirrored) < 48


def test_crop_takes_a_window_of_the_padded_image_per_image():
    images = batch_of_distinct_images()
    out = augment(images, np.random.default_rng(2), crop_padding=2, flip=False)
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    offsets = set()
    for o, p in zip(out, padded):
        found = [(dy, dx) for dy in range(5) for dx in range(5) if np.array_equal(o, p[dy : dy + 8, dx : dx + 8])]
        assert found
        offsets.add(found[0])
    assert len(offsets) > 10  # each image draws its own offset


def test_cutout_zeroes_one_square_per_image():
    images = batch_of_distinct_images(size=16)
    out = augment(images, np.random.default_rng(3), crop_padding=0, flip=False, cutout=4)
    zeroed = (out == 0).all(axis=-1) & (images != 0).all(axis=-1)
    assert zeroed.sum(axis=(1, 2)).max() == 16
    assert np.array_equal(out[~zeroed], images[~zeroed])


def test_batches_cover_every_image_once_per_epoch_and_reproduce():
    images = batch_of_distinct_images(n=50)
    split = Split(images, np.arange(50, dtype="int32"))
    batches = Batches(split, 16, seed=7, augmentation=None)
    assert len(batches) == 4
    labels = np.concatenate([batches[i][1] for i in range(len(batches))])
    assert sorted(labels) == list(range(50))
    first_epoch = labels
    batches.on_epoch_end()
    second = np.concatenate([batches[i][1] for i in range(len(batches))])
    assert not np.array_equal(first_epoch, second)
    resumed = Batches(split, 16, seed=7, augmentation={"crop_padding": 2, "flip": True}, epoch=1)
    again = Batches(split, 16, seed=7, augmentation={"crop_padding": 2, "flip": True}, epoch=1)
    np.testing.assert_array_equal(resumed[2][0], again[2][0])
    np.testing.assert_array_equal(resumed[2][1], second[32:48])
    x, y = Batches(split, 16, one_hot=50)[0]
    assert y.shape == (16, 50) and (y.sum(axis=1) == 1).all()


def test_batches_prepared_ahead_in_threads_are_the_same_batches():
    split = Split(batch_of_distinct_images(n=50), np.arange(50, dtype="int32"))
    augmentation = {"crop_padding": 2, "flip": True, "cutout": 4}
    one, three = (Batches(split, 8, seed=7, augmentation=augmentation, threads=t) for t in (1, 3))
    for batches in (one, three):  # as Keras uses them: peeks, an extra on_epoch_end, then epochs pinned
        batches[0], batches[1]
        batches.on_epoch_end()
    for epoch, indices in ((0, range(7)), (1, range(7)), (1, [3, 0, 6]), (5, [6, 5])):
        one.set_epoch(epoch)
        three.set_epoch(epoch)
        for i in indices:
            for a, b in zip(one[i], three[i]):
                np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="Received: threads=0"):
        Batches(split, 8, threads=0)
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        Batches(split, 0)
    with pytest.raises(ValueError, match="Received: crop_padding=-1, cutout=0"):
        augment(split.images, np.random.default_rng(0), crop_padding=-1)


def test_shards_split_every_global_batch_and_drop_the_incomplete_last_one():
    split = Split(batch_of_distinct_images(n=50), np.arange(50, dtype="int32"))
    whole = Batches(split, 16, seed=7, epoch=3)
    shards = [Batches(split, 16, seed=7, epoch=3, shard=(i, 4)) for i in range(4)]
    assert [len(s) for s in shards] == [3] * 4  # 50 images: 3 full batches of 16
    for index in range(3):
        parts = [s[index] for s in shards]
        assert all(len(labels) == 4 for _, labels in parts)
        np.testing.assert_array_equal(np.concatenate([labels for _, labels in parts]), whole[index][1])
        np.testing.assert_array_equal(np.concatenate([images for images, _ in parts]), whole[index][0])
    with pytest.raises(ValueError, match=r"shard=\(0, 3\)"):
        Batches(split, 16, shard=(0, 3))


def flipped_images(batches):
    """Image index (the label) -> whether this epoch of `batches` shows it mirrored (crop and cutout off)."""
    flipped = {}
    for index in range(len(batches)):
        images, labels = batches[index]
        for image, label in zip(images, labels):
            flipped[int(label)] = not np.array_equal(image, batches.split.images[label])
            assert flipped[int(label)] is False or np.array_equal(image, batches.split.images[label][:, ::-1])
    return flipped


def test_alternate_flip_shows_each_image_both_ways_in_any_two_epochs_in_a_row():
    split = Split(batch_of_distinct_images(n=200), np.arange(200, dtype="int32"))
    alternate = {"crop_padding": 0, "flip": True, "alternate_flip": True}
    epochs = [flipped_images(Batches(split, 16, seed=7, augmentation=alternate, epoch=e)) for e in range(4)]
    assert 70 < sum(epochs[0].values()) < 130  # a random half, then the other half, and so on
    for earlier, later in zip(epochs, epochs[1:]):
        assert all(earlier[i] != later[i] for i in range(200))
    # Fixed per image by the seed: the batch size, and so which batch an image falls in, changes nothing.
    assert flipped_images(Batches(split, 64, seed=7, augmentation=alternate, epoch=3)) == epochs[3]
    # A resumed run (built at its epoch, as above) sees what an unbroken one sees after its epochs end.
    unbroken = Batches(split, 16, seed=7, augmentation=alternate, epoch=0)
    unbroken.on_epoch_end()
    assert flipped_images(unbroken) == epochs[1]
    assert flipped_images(Batches(split, 16, seed=8, augmentation=alternate, epoch=3)) != epochs[3]
    # Only the flips change: each image gets the crop it gets with random flips (a flip comes after the crop).
    random = {"crop_padding": 2, "flip": True}
    plain, alternating = (Batches(split, 16, seed=7, augmentation=a, epoch=1) for a in (random, {**random, "alternate_flip": True}))
    same = []
    for index in range(len(plain)):
        for a, b in zip(plain[index][0], alternating[index][0]):
            same.append(np.array_equal(a, b))
            assert same[-1] or np.array_equal(a, b[:, ::-1])
    assert 0 < sum(same) < len(same)
    with pytest.raises(ValueError, match="alternate_flip .* needs flip=True. Received: flip=False"):
        Batches(split, 16, augmentation={"flip": False, "alternate_flip": True})


def two_class_tree(cifar10_dir, root):
    """train/ and test/ each with a/{0000,0001}.jpg and b/0002.jpg: copies of real CIFAR-10 images."""
    for split in ("train", "test"):
        for name, files in (("a", ("0000.jpg", "0001.jpg")), ("b", ("0002.jpg",))):
            (root / split / name).mkdir(parents=True)
            for file in files:
                shutil.copy2(cifar10_dir / "test" / "cat" / file, root / split / name / file)
    return root


def test_an_image_moved_to_another_class_folder_takes_its_new_label(cifar10_dir, tmp_path, monkeypatch):
    """Moving a mislabelled image into the right class folder is a routine fix: the cache must not hide it."""
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    root = two_class_tree(cifar10_dir, tmp_path / "data")
    before, _, names = data.load_image_folders(root, (32, 32))
    assert names == ["a", "b"] and before.labels.tolist() == [0, 0, 1]
    for split in ("train", "test"):
        shutil.move(root / split / "a" / "0001.jpg", root / split / "b" / "0001.jpg")  # same size and mtime
    after, test, _ = data.load_image_folders(root, (32, 32))
    assert after.labels.tolist() == test.labels.tolist() == [0, 1, 1]
    moved = np.asarray(Image.open(root / "train" / "b" / "0001.jpg"))
    assert np.array_equal(after.images[1], moved)


def test_zoo_eval_sees_an_image_moved_between_class_folders(cifar10_dir, tmp_path, monkeypatch, capsys):
    """The newcomer's reproduction: the confusion matrix follows the files, not a stale cache."""
    import json

    from zoo import lenet5
    from zoo.cli import main

    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    root = two_class_tree(cifar10_dir, tmp_path / "data")
    model_file = tmp_path / "two_classes.keras"
    lenet5(num_classes=2).save(model_file)

    def row_sums():
        assert main(["eval", str(model_file), "--data-dir", str(root), "--json"]) == 0
        return [sum(row) for row in json.loads(capsys.readouterr().out)["confusion_matrix"]]

    assert row_sums() == [2, 1]
    shutil.move(root / "test" / "a" / "0001.jpg", root / "test" / "b" / "0001.jpg")
    assert row_sums() == [1, 2]


def test_without_network_tfds_fails_at_once_and_makes_no_folder(tmp_path, monkeypatch, capsys):
    """tfds retried for ~210 s before its error, and made ~/tensorflow_datasets on the way."""
    import socket
    import time

    from zoo.cli import main

    def unreachable(address, timeout=None):
        raise OSError(f"no route to {address[0]} in this test")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    for name in data.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    started = time.perf_counter()
    with pytest.raises(DataUnavailableError, match=r"would download 'cifar10' into .*, but this machine reaches none of www.cs.toronto.edu, storage.googleapis.com\. Without internet, give image folders"):
        load_dataset("cifar10")
    assert main(["eval", "lenet5", "--weights", "cifar10"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].endswith("The figures of lenet5(weights='cifar10') were measured on CIFAR-10 test, local 5k half (JPEG copy).")
    assert time.perf_counter() - started < 30
    assert not (tmp_path / "tfds").exists()


def test_the_folder_a_failed_download_left_adds_no_warning_to_the_error(tmp_path, monkeypatch, capfd, caplog):
    """tfds logged "WARNING:absl:Variant folder .../cifar10/3.0.2 has no dataset_info.json" before zoo's error."""
    from zoo.cli import main

    monkeypatch.setattr(data, "network_reachable", lambda hosts: False)
    (tmp_path / "tfds" / "cifar10" / "3.0.2").mkdir(parents=True)
    assert main(["eval", "lenet5", "--weights", "cifar10", "--tfds-data-dir", str(tmp_path / "tfds")]) == 2
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"zoo eval: error: tensorflow-datasets would download 'cifar10' into {tmp_path}"), err
    assert not [r.getMessage() for r in caplog.records if r.name == "absl"]  # pytest keeps log records off stderr


@pytest.mark.parametrize("damage", ["truncated", "garbled", "emptied"])
def test_a_damaged_cache_file_is_noticed_and_rebuilt_never_read_wrong(cifar10_dir, tmp_path, monkeypatch, capsys, damage):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    root = two_class_tree(cifar10_dir, tmp_path / "data")
    first, _ = data.load_image_folder_split(root, "train", (32, 32))
    [cached] = (tmp_path / "cache").glob("train-*.npz")
    raw = bytearray(cached.read_bytes())
    if damage == "truncated":  # a crash while a non-atomic writer wrote it, a full disk
        raw = raw[: len(raw) * 2 // 3]
    elif damage == "garbled":  # one flipped byte in the middle of the pixels
        raw[len(raw) // 2] ^= 0x40
    else:
        raw = b""
    cached.write_bytes(bytes(raw))
    again, _ = data.load_image_folder_split(root, "train", (32, 32))
    assert f"warning: the cached arrays {cached} are damaged (cut short or garbled): decoding {root / 'train'} again" in capsys.readouterr().err
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.labels, first.labels)
    np.testing.assert_array_equal(data._read_cache(cached, 3, (32, 32, 3)).images, first.images)  # rewritten whole


def test_awkward_and_hostile_image_files_are_decoded_right_or_refused_in_one_line(cifar10_dir, tmp_path):
    import struct
    import zlib

    from PIL import ImageCms

    cat = np.asarray(Image.open(cifar10_dir / "test" / "cat" / "0000.jpg").convert("RGB"))
    wide = np.zeros((8, 16, 3), "uint8")
    wide[:, :8] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(wide).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    assert data.read_image(tmp_path / "rotated.jpg", (16, 8))[:8].mean() > 200  # upright: the white half on top
    grey16 = (np.arange(64, dtype="uint16").reshape(8, 8) * 1000)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")  # mode I;16
    np.testing.assert_array_equal(data.read_image(tmp_path / "grey16.png", (8, 8), channels=1)[..., 0], (grey16 >> 8).astype("uint8"))
    Image.fromarray(cat).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    assert np.abs(data.read_image(tmp_path / "cmyk.jpg", (32, 32)).astype(int) - cat).mean() < 8
    palette = Image.fromarray(cat).convert("P")
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(data.read_image(tmp_path / "palette.png", (32, 32)), np.asarray(palette.convert("RGBA"))[..., :3])
    Image.fromarray(cat).save(tmp_path / "icc.png", icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    assert np.abs(data.read_image(tmp_path / "icc.png", (32, 32)).astype(int) - cat).mean() < 2
    # Refused, each in one line naming the file, without reading pixels.
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "cut.jpg").write_bytes((cifar10_dir / "test" / "cat" / "0000.jpg").read_bytes()[:300])
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))  # noqa: E731
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    refused = {
        "empty.jpg": "it is empty (0 bytes)", "cut.jpg": "Cannot decode image file", "bomb.png": "more than the 50,000,000 pixels accepted (a decompression bomb?)",
        "loop.jpg": "a broken symbolic link or a link loop",
    }
    for name, message in refused.items():
        with pytest.raises(ValueError) as error:
            data.read_image(tmp_path / name, (32, 32))
        assert str(tmp_path / name) in str(error.value) and message in str(error.value) and "\n" not in str(error.value), str(error.value)
    # In a data folder the link loop is named too, not skipped.
    root = two_class_tree(cifar10_dir, tmp_path / "tree")
    (root / "train" / "a" / "loop.jpg").symlink_to(root / "train" / "a" / "loop.jpg")
    with pytest.raises(ValueError, match="loop.jpg: a broken symbolic link or a link loop"):
        data.load_image_folder_split(root, "train", (32, 32))


def test_two_processes_building_the_same_cache_at_once_both_get_the_same_whole_arrays(small_cifar10, tmp_path):
    import subprocess
    import sys

    script = (
        "import sys, numpy as np; from zoo.data import load_image_folder_split\n"
        "split, _ = load_image_folder_split(sys.argv[1], 'train', (32, 32))\n"
        "np.save(sys.argv[2], split.images)\n"
    )
    env = {**os.environ, "ZOO_CACHE_DIR": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(small_cifar10), str(tmp_path / f"{i}.npy")], env=env, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for process in processes:
        assert process.wait(300) == 0, process.stderr.read()[-2000:]
    a, b = np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy")
    assert a.shape == (3000, 32, 32, 3) and np.array_equal(a, b)
    assert [p.name.startswith("train-") for p in (tmp_path / "cache").iterdir()] == [True]  # one whole file, no leftovers
    np.testing.assert_array_equal(data._read_cache(next((tmp_path / "cache").iterdir()), 3000, (32, 32, 3)).images, a)
