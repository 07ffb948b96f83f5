"""Data sources (tensorflow-datasets, image folders) -> uint8 arrays in memory; shuffled, augmented batches.

Nothing here needs TensorFlow except the tfds source: training also runs under the JAX backend.
Images stay raw uint8 RGB (0-255); scaling lives inside the models.
"""

import concurrent.futures
import dataclasses
import difflib
import hashlib
import io
import logging
import os
import pathlib
import socket
import sys
import urllib.parse
import zipfile

import numpy as np

import keras

from zoo import augment as augmentations
from zoo import idx
from zoo.files import DiskFull, write_atomically

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
COLOR_MODES = {1: "grayscale", 3: "rgb", 4: "rgba"}
SYSTEM_FILES = {"Thumbs.db", "desktop.ini"}  # besides hidden ones (.DS_Store, ._x, .ipynb_checkpoints/)


def _file_or_dead_link(path):
    """Files, and links that lead nowhere (a loop, a missing target), which reading then names rather than skipping."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def _entries(folder, is_wanted):
    """The entries of `folder` that `is_wanted`, sorted, leaving out hidden and system files."""
    return sorted(p for p in folder.iterdir() if is_wanted(p) and not p.name.startswith(".") and p.name not in SYSTEM_FILES)


class DataUnavailableError(FileNotFoundError):
    """A dataset that is not on this machine and could not be downloaded."""


@dataclasses.dataclass
class Split:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int32 [N]

    def __len__(self):
        return len(self.labels)


@dataclasses.dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    class_names: list
    source: str
    split: dict = dataclasses.field(default_factory=dict)  # how the splits were made (results.json keeps it)


def cache_dir():
    """Where decoded image folders are cached: $ZOO_CACHE_DIR, else ~/.cache/zoo (never beside the data)."""
    default = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "zoo"
    return pathlib.Path(os.environ.get("ZOO_CACHE_DIR", default))


def load_dataset(
    source="cifar10",
    *,
    data_dir=None,
    tfds_data_dir=None,
    image_size=(32, 32),
    channels=3,
    validation_size=5000,
    validation_fraction=0.0,
    test_fraction=0.2,
    seed=0,
    limit=None,
):
    """Train/validation/test splits as uint8 arrays of `image_size`.

    `data_dir` takes precedence over `source`, a tensorflow-datasets name. It is an image-folder tree
    `train/<class>/*` and `test/<class>/*`, or a single folder of class folders, which is split with
    `seed` into train and test (`test_fraction` of each class: a stratified split). The validation
    split is carved from train with `seed`: `validation_size` random images, or with
    `validation_fraction` that fraction of each class. `limit` keeps only the first `limit` images
    of each split after a seeded shuffle (for quick runs).
    """
    if channels not in COLOR_MODES:
        raise ValueError(f"`channels` must be one of {sorted(COLOR_MODES)}. Received: channels={channels!r}")
    rng = np.random.default_rng(seed)
    how = {"seed": seed}
    if data_dir and is_single_folder(data_dir):
        everything, class_names = load_image_folder_split(data_dir, None, image_size, channels)
        source = str(pathlib.Path(data_dir).resolve())
        test, train = stratified_split(everything, test_fraction, class_names, rng, "data.test_fraction")
        how.update(layout="one folder of class folders, split per class", test_fraction=test_fraction)
    elif data_dir:
        train, test, class_names = load_image_folders(data_dir, image_size, channels)
        source = str(pathlib.Path(data_dir).resolve())
        how.update(layout="idx files, train and test" if idx.is_idx_folder(data_dir) else "train/ and test/ folders")
    else:
        train, test, class_names = load_tfds(source, image_size, channels, data_dir=tfds_data_dir)
        source = f"tfds:{source}"
        how.update(layout="tensorflow-datasets train and test splits")
    train = _take(train, rng.permutation(len(train)))
    test = _take(test, rng.permutation(len(test)))
    if validation_fraction:
        val, train = stratified_split(train, validation_fraction, class_names, rng, "data.validation_fraction")
        how.update(validation_fraction=validation_fraction)
    else:
        if not 0 <= validation_size < len(train):
            raise ValueError(
                f"data.validation_size (images carved from train for validation) must be less than the {len(train):,} "
                f"training images of {source}, leaving some to train on. Received: data.validation_size={validation_size!r}"
            )
        val, train = _take(train, slice(0, validation_size)), _take(train, slice(validation_size, None))
        how.update(validation_size=validation_size)
    if limit:
        train, val, test = (_take(s, slice(0, limit)) for s in (train, val, test))
    return Dataset(train, val, test, class_names, source, how)


def load_test_images(data_dir, image_size, channels=3, split=None):
    """`(test split, class names, which images)` of `--data-dir` for evaluation: its `test/` folder;
    for a single folder of class folders, the test part of the split a run made of it (`split`, from
    its results.json: seed and test_fraction), else every image in it."""
    if not is_single_folder(data_dir):
        test, class_names = load_image_folder_split(data_dir, "test", image_size, channels)
        return test, class_names, "its test idx files" if idx.is_idx_folder(data_dir) else "test/"
    if split and "test_fraction" in split:
        dataset = load_dataset(
            data_dir=data_dir, image_size=image_size, channels=channels, validation_size=0,
            test_fraction=split["test_fraction"], seed=split["seed"],
        )
        return dataset.test, dataset.class_names, f"the run's test part ({split['test_fraction']:.0%} of each class, seed {split['seed']})"
    everything, class_names = load_image_folder_split(data_dir, None, image_size, channels)
    return everything, class_names, "every image"


def stratified_split(split, fraction, class_names, rng, key="fraction"):
    """`(held, kept)`: `fraction` of each class's images (at least one) held out, drawn with `rng`;
    a ValueError naming a class too small to leave images on both sides."""
    held, kept = [], []
    for label, name in enumerate(class_names):
        index = rng.permutation(np.flatnonzero(split.labels == label))
        count = max(1, round(fraction * len(index)))
        if count >= len(index):
            raise ValueError(
                f"Class '{name}' has {len(index)} image{'s' if len(index) != 1 else ''}: too few to hold out {key} = {fraction} "
                "of them and keep some. Add images, or lower the fraction."
            )
        held.append(index[:count])
        kept.append(index[count:])
    return _take(split, np.sort(np.concatenate(held))), _take(split, np.sort(np.concatenate(kept)))


def is_single_folder(data_dir):
    """Whether `data_dir` is one folder of class folders (no `train/` or `test/` split folders)."""
    root = pathlib.Path(data_dir)
    return root.is_dir() and not (root / "train").exists() and not (root / "test").exists() and not idx.is_idx_folder(root)


def _take(split, index):
    return Split(split.images[index], split.labels[index])


def _unprepared_folder_warning(record):
    """False for tfds' "Variant folder ... has no dataset_info.json", which a failed download leaves behind."""
    return not str(record.msg).startswith("Variant folder ")


def load_tfds(name, image_size, channels, data_dir=None):
    """Train and test splits of a tensorflow-datasets image classification dataset."""
    import tensorflow_datasets as tfds

    logging.getLogger("absl").addFilter(_unprepared_folder_warning)  # zoo's error below says where it would download
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:  # its message lists all ~450 datasets
        close = difflib.get_close_matches(name, tfds.list_builders(with_community_datasets=False), n=3)
        raise ValueError(
            f"Unknown tensorflow-datasets name.{' Did you mean: ' + ', '.join(close) + '?' if close else ''} "
            f"See https://www.tensorflow.org/datasets/catalog. Received: source={name!r}"
        ) from None
    offline_hint = (
        "Without internet, give image folders (--data-dir DIR with DIR/train/<class>/*, DIR/test/<class>/*), "
        "or the --tfds-data-dir where it is already prepared."
    )
    if not builder.is_prepared():
        # tfds retries a failed download for minutes (and makes ~/tensorflow_datasets first): ask once, fast.
        hosts = [h for h in (urllib.parse.urlparse(builder.info.homepage or "").hostname, "storage.googleapis.com") if h]
        if not network_reachable(hosts):
            raise DataUnavailableError(
                f"tensorflow-datasets would download '{name}' into {builder.data_dir}, but this machine reaches none of "
                f"{', '.join(hosts)}. {offline_hint}"
            )
    try:
        builder.download_and_prepare()
    except OSError as e:  # e.g. requests' ConnectionError on a machine without internet
        raise DataUnavailableError(f"tensorflow-datasets could not download '{name}' into {builder.data_dir}: {e}. {offline_hint}") from None
    class_names = builder.info.features["label"].names
    splits = []
    for split in ("train", "test"):
        batches = list(tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True).batch(4096)))
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches]).astype("int32")
        splits.append(Split(_resize(images, image_size, channels), labels))
    return splits[0], splits[1], class_names


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def network_reachable(hosts, timeout=3.0):
    """Whether a TCP connection to port 443 of any of `hosts` opens within `timeout` seconds (assumed
    so behind a proxy, which only the downloader knows how to use)."""
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return True
    for host in hosts:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            return True
        except OSError:
            continue
    return False


def _resize(images, image_size, channels):
    """uint8 images at `image_size` with `channels`, converting through Pillow only if needed."""
    if images.shape[1:] == (*image_size, channels):
        return images.astype("uint8")
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    out = np.empty((len(images), *image_size, channels), "uint8")
    for i, image in enumerate(images):
        pil = keras.utils.array_to_img(image, scale=False).convert(mode)
        out[i] = np.asarray(pil.resize(image_size[::-1]), "uint8").reshape(out.shape[1:])
    return out


def image_files(paths):
    """`paths` with each folder replaced by the image files in it (sorted; hidden and system files left out)."""
    files = []
    for path in map(pathlib.Path, paths):
        files += _entries(path, lambda p: p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    return files


def folder_class_names(data_dir):
    """The class names of `--data-dir` without decoding anything: of train/ and test/, or of the single folder."""
    if is_single_folder(data_dir):
        return [p.name for p in _entries(pathlib.Path(data_dir), pathlib.Path.is_dir)]
    if idx.is_idx_folder(data_dir):
        return idx.load_split(data_dir, "train")[2]
    return class_folders(data_dir)


def class_folders(data_dir):
    """Class names of an image-folder tree (sorted folder names), checked across both splits."""
    root = pathlib.Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"No such data folder: {root} (expected {root}/<class>/*, or {root}/train/<class>/* and {root}/test/<class>/*).")
    names = {}
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise ValueError(f"Missing split folder {folder}: expected {root}/train/<class>/* and {root}/test/<class>/*.")
        names[split] = [p.name for p in _entries(folder, pathlib.Path.is_dir)]
        if not names[split]:
            raise ValueError(f"Split folder {folder} has no class folders.")
    if names["train"] != names["test"]:
        only_train = sorted(set(names["train"]) - set(names["test"]))
        only_test = sorted(set(names["test"]) - set(names["train"]))
        raise ValueError(
            f"Class folders differ between {root / 'train'} and {root / 'test'}: "
            f"only in train: {only_train}, only in test: {only_test}."
        )
    return names["train"]


def load_image_folders(data_dir, image_size, channels=3):
    """Decode `train/` and `test/` of an image-folder tree once (cached) into uint8 arrays; or read a
    folder of idx files (MNIST and its kin, see `zoo.idx`)."""
    if idx.is_idx_folder(data_dir):
        (train, names), (test, _) = (load_image_folder_split(data_dir, split, image_size, channels) for split in ("train", "test"))
        return train, test, names
    class_names = class_folders(data_dir)
    splits = [_load_split(pathlib.Path(data_dir) / split, class_names, image_size, channels) for split in ("train", "test")]
    return splits[0], splits[1], class_names


def load_image_folder_split(data_dir, split, image_size, channels=3):
    """One split (`"train"` or `"test"`) of an image-folder tree, in file order, and the class names;
    with `split=None`, all images of a single folder of class folders. A folder of idx files gives its
    train or test images, fitted to `image_size` (see `zoo.idx.fit`)."""
    if split is not None and idx.is_idx_folder(data_dir):
        images, labels, class_names = idx.load_split(data_dir, split)
        return Split(idx.fit(images, image_size, channels), labels), class_names
    if split is None:
        class_names = [p.name for p in _entries(pathlib.Path(data_dir), pathlib.Path.is_dir)]
        if not class_names:
            raise ValueError(
                f"{data_dir} has no class folders: expected {data_dir}/<class>/* (or train/<class>/* and test/<class>/*)."
            )
        return _load_split(pathlib.Path(data_dir), class_names, image_size, channels), class_names
    class_names = class_folders(data_dir)
    return _load_split(pathlib.Path(data_dir) / split, class_names, image_size, channels), class_names


def _load_split(folder, class_names, image_size, channels):
    files, labels = [], []
    for label, name in enumerate(class_names):
        found = _entries(folder / name, _file_or_dead_link)
        if not found:
            raise ValueError(f"Empty class folder {folder / name}: every class needs at least one image.")
        files += found
        labels += [label] * len(found)
    for f in files:
        if not f.exists():
            raise ValueError(f"Cannot read image file {f}: a broken symbolic link or a link loop.")
    cached = cache_dir() / f"{folder.name}-{_cache_key(folder, class_names, files, labels, image_size, channels)}.npz"
    if cached.exists():
        split = _read_cache(cached, len(files), (*image_size, channels))
        if split is not None and np.array_equal(split.labels, labels):
            return split
        print(f"warning: the cached arrays {cached} are damaged (cut short or garbled): decoding {folder} again", file=sys.stderr, flush=True)
        cached.unlink(missing_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        images = np.stack(list(pool.map(lambda f: _decode(f, image_size, channels), files, chunksize=256)))
    split = Split(images, np.asarray(labels, "int32"))
    try:
        write_atomically(cached, lambda tmp: _save_npz(tmp, images=split.images, labels=split.labels))
    except OSError as e:  # only a cache: the decoded arrays are in hand, and write_atomically left no part behind
        why = "no space left on the device" if isinstance(e, DiskFull) else e.strerror or type(e).__name__
        print(f"warning: could not cache the decoded images of {folder} in {cached.parent} ({why}): going on without it, "
              "decoding again next time (ZOO_CACHE_DIR sets another folder)", file=sys.stderr, flush=True)
    return split


def _read_cache(path, count, shape):
    """The cached split, or None if the file cannot be read whole: a truncated archive, or a garbled one (each
    array's CRC-32 is checked as it is read), or arrays of another count or shape."""
    try:
        with np.load(path) as data:
            split = Split(data["images"], data["labels"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return split if split.images.shape == (count, *shape) and split.labels.shape == (count,) else None


CACHE_FORMAT = 3  # bump when what the arrays hold changes for the same files


def _cache_key(folder, class_names, files, labels, image_size, channels):
    """A digest of everything that defines a split's arrays: the folder, the class list, every file's
    path below the folder (so its class folder), label, size and mtime, and the decoding options.
    Moving an image to another class folder, or renaming a class, gives another key."""
    key = hashlib.sha256(repr((CACHE_FORMAT, str(folder.resolve()), list(class_names), tuple(image_size), channels)).encode())
    for f, label in zip(files, labels):
        stat = f.stat()
        key.update(f"{f.relative_to(folder).as_posix()}:{label}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return key.hexdigest()[:24]


def _save_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _decode(path, image_size, channels):
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"Not an image file: {path} (expected one of {', '.join(IMAGE_SUFFIXES)}).")
    return read_image(path, image_size, channels)


MAX_PIXELS = 50_000_000  # larger images are refused before decoding (a decompression bomb claims billions)
PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def read_image(path, image_size, channels=3):
    """One image file of any common format as uint8 [H, W, channels], resized (nearest, as Keras' `load_img`)
    to `image_size`: EXIF orientation applied, an embedded ICC profile converted to sRGB, 16-bit greys scaled
    to 8 bits, alpha dropped; a ValueError naming the file when it cannot be decoded or claims more than
    MAX_PIXELS pixels (checked from its header, before any pixel is read)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = pathlib.Path(path)
    if path.is_symlink() and not path.exists():
        raise ValueError(f"Cannot read image file {path}: a broken symbolic link or a link loop.")
    if not path.is_file():
        raise FileNotFoundError(f"No such image file: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"Cannot decode image file {path}: it is empty (0 bytes).")
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ValueError(f"it claims {image.width}x{image.height}, more than the {MAX_PIXELS:,} pixels accepted (a decompression bomb?)")
            image = _as_mode(ImageOps.exif_transpose(image), PIL_MODES[channels])
            image = image.resize((image_size[1], image_size[0]), Image.NEAREST) if image.size != (image_size[1], image_size[0]) else image
            pixels = np.asarray(image, "uint8")
    except UnidentifiedImageError:
        raise ValueError(f"Cannot decode image file {path}: not an image format Pillow can read.") from None
    except Image.DecompressionBombError:  # Pillow's own limit, met while reading the header
        raise ValueError(f"Cannot decode image file {path}: it claims more than the {MAX_PIXELS:,} pixels accepted (a decompression bomb?)") from None
    except Exception as e:  # truncated or damaged files raise OSError, SyntaxError, ...; ours a ValueError
        raise ValueError(f"Cannot decode image file {path}: {e if isinstance(e, ValueError) else f'{type(e).__name__}: {e}'}") from None
    return pixels.reshape(*image_size, channels)


def _as_mode(image, mode):
    """`image` in the Pillow mode `mode`, from 16-bit greys (scaled, not clipped), CMYK, palettes and ICC-tagged files."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greys: Pillow's own convert would clip at 255
        wide = np.asarray(image, "uint32") if image.mode != "I" else np.asarray(image).astype("int64").clip(0, 65535)
        image = Image.fromarray((wide >> 8).astype("uint8"), "L")
    profile = image.info.get("icc_profile")
    if profile and image.mode in ("RGB", "RGBA", "CMYK"):
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            image = ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # an unreadable profile: the pixels as stored, like most viewers
            pass
    if image.mode == "P":  # palettes, with or without transparency: through RGBA, so no warning about it
        image = image.convert("RGBA")
    return image if image.mode == mode else image.convert(mode)


def as_rgb(images):
    """Greyscale images [..., 1] as RGB [..., 3] (the grey repeated); others as they are."""
    images = np.asarray(images)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def one_hot(labels, num_classes):
    return np.eye(num_classes, dtype="float32")[labels]


class Batches(keras.utils.PyDataset):
    """Shuffled, augmented batches of a `Split`, reproducible from (`seed`, epoch, batch index).

    Labels are sparse ints, or one-hot vectors of length `one_hot` when it is given. With
    `shard=(i, n)` each batch is the i-th of n equal parts of a global batch of `batch_size`
    images (one replica's share in multi-worker training) and an incomplete last batch is dropped.

    Every draw depends only on those three numbers, so a run resumed at epoch k sees exactly
    the batches an uninterrupted run would have seen, and `threads` > 1 (that many batches
    prepared ahead, in threads) changes nothing but speed. Training pins the epoch with
    `set_epoch` (see `EpochSync`): Keras calls `on_epoch_end` once more before the first epoch.

    With `alternate_flip` in `augmentation`, each image is flipped in every other epoch (`zoo.augment.alternating_flips`).

    `on_device=True` copies the uint8 images to the backend's device once and returns each batch as
    a device tensor, gathered and augmented there (`zoo.augment.apply_on_device`): the same pixels
    as on the host, without a host copy per batch (what keeps a fast GPU busy); `threads` does not apply.
    """

    def __init__(self, split, batch_size, *, seed=0, augmentation=None, epoch=0, one_hot=None, shard=None, threads=1, on_device=False):
        super().__init__()  # Keras' own worker threads would mix up epochs; prefetching is done here
        self.split, self.batch_size, self.seed, self.one_hot = split, batch_size, seed, one_hot
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1. Received: batch_size={batch_size!r}")
        if shard is not None and (batch_size % shard[1] or not 0 <= shard[0] < shard[1]):
            raise ValueError(f"A shard is (index, count) with count dividing the batch size {batch_size}. Received: shard={shard!r}")
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a whole number >= 1. Received: threads={threads!r}")
        augmentation = dict(augmentation) if augmentation is not None else None
        self._flip_half = None  # alternate_flip: the images flipped in even epochs, fixed by the seed
        if augmentation:
            augmentations.check(augmentation.get("crop_padding", 0), augmentation.get("cutout", 0), augmentation.get("padding_mode", "constant"))
            if augmentation.pop("alternate_flip", False):
                if not augmentation.get("flip", True):
                    raise ValueError("alternate_flip decides which images are flipped in each epoch: it needs flip=True. Received: flip=False")
                # A stream of its own: each batch draws from [seed, epoch, index, 1], each epoch's order from [seed, epoch].
                self._flip_half = np.random.default_rng([seed, 0, 0, 2]).random(len(split)) < 0.5
        self.shard, self.augmentation, self.threads = shard, augmentation, 1 if on_device else threads
        self._device_images = keras.ops.convert_to_tensor(split.images) if on_device else None
        self._pool, self._ahead = None, {}  # threads, and (epoch, index) -> future, once used
        self.set_epoch(epoch)

    @property
    def on_device(self):
        """Whether batches are gathered and augmented on the backend's device (device tensors)."""
        return self._device_images is not None

    def set_epoch(self, epoch):
        self.epoch = epoch
        self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.split))

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)

    def __len__(self):
        if self.shard:
            return len(self.split) // self.batch_size
        return -(-len(self.split) // self.batch_size)

    def __getitem__(self, index):
        if self.threads == 1:
            return self._batch(self._order, self.epoch, index)
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.threads)
        wanted = [(self.epoch, i) for i in range(index, min(index + self.threads, len(self)))]
        for key in set(self._ahead) - set(wanted):  # other epochs, or already taken
            self._ahead.pop(key).cancel()
        for key in wanted:
            if key not in self._ahead:
                self._ahead[key] = self._pool.submit(self._batch, self._order, *key)
        return self._ahead.pop(wanted[0]).result()

    def _batch(self, order, epoch, index):
        chosen = order[index * self.batch_size : (index + 1) * self.batch_size]
        stream = [self.seed, epoch, index, 1]
        if self.shard:
            part, parts = self.shard
            chosen = chosen[part * len(chosen) // parts : (part + 1) * len(chosen) // parts]
            stream.append(part)
        if self._device_images is None:
            images, apply = self.split.images[chosen], augmentations.apply
        else:
            images, apply = keras.ops.take(self._device_images, chosen, axis=0), augmentations.apply_on_device
        if self.augmentation is not None:
            _, h, w, _ = self.split.images.shape
            d = augmentations.draw(len(chosen), h, w, np.random.default_rng(stream), **self.augmentation)
            if self._flip_half is not None:  # drawn above all the same, so crops and cutouts do not change
                d = dataclasses.replace(d, flipped=augmentations.alternating_flips(self._flip_half[chosen], epoch))
            images = apply(images, d)
        labels = self.split.labels[chosen]
        return images, labels if self.one_hot is None else one_hot(labels, self.one_hot)


class EpochSync(keras.callbacks.Callback):
    """Sets the epoch of `Batches` from `fit`'s own epoch number as each epoch begins."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)
