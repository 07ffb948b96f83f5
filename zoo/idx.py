"""MNIST-family data as it is distributed: a folder of idx files (MNIST, Fashion-MNIST, KMNIST, EMNIST).

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz  t10k-images-idx3-ubyte.gz  t10k-labels-idx1-ubyte.gz

Gzipped or not; the test files are named `t10k-` (MNIST and its kin) or `test-` (EMNIST's
`emnist-balanced-test-...`). An idx file is a 4-byte magic (0, 0, the type 0x08 for uint8, the number of
dimensions), the dimensions as big-endian uint32, then the values, row-major. Class names are the label
numbers ("0".."9"), or the lines of a `classes.txt` beside the files.
"""

import gzip
import pathlib

import numpy as np

SPLIT_WORDS = {"train": ("train",), "test": ("t10k", "test")}


def is_idx_folder(data_dir):
    """Whether `data_dir` holds idx image files (rather than image folders)."""
    root = pathlib.Path(data_dir)
    return root.is_dir() and any(_kind(p) == "images" for p in root.iterdir())


def load_split(data_dir, split):
    """`(images [N, H, W] uint8, labels [N] int32, class names)` of `split` ("train" or "test")."""
    root = pathlib.Path(data_dir)
    found = {kind: [p for p in sorted(root.iterdir()) if _kind(p) == kind and _split(p) == split] for kind in ("images", "labels")}
    for kind, paths in found.items():
        if len(paths) != 1:
            words = " or ".join(f"{w}-{kind}-idx{3 if kind == 'images' else 1}-ubyte[.gz]" for w in SPLIT_WORDS[split])
            raise ValueError(f"{root} holds {len(paths)} {split} {kind} files ({', '.join(p.name for p in paths) or 'none'}): expected one named *{words}.")
    images, labels = read(found["images"][0]), read(found["labels"][0])
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(f"{found['images'][0]} and {found['labels'][0]}: expected images [N, rows, columns] and labels [N]; they are {images.shape} and {labels.shape}.")
    if len(images) != len(labels):
        raise ValueError(f"{found['images'][0]} holds {len(images):,} images but {found['labels'][0]} {len(labels):,} labels: they must match one to one.")
    names = class_names(root, labels)
    if labels.max(initial=0) >= len(names):
        raise ValueError(f"{found['labels'][0]} has label {labels.max()}, but there are {len(names)} class names (classes.txt): one per label.")
    return images, labels.astype("int32"), names


def class_names(root, labels):
    listed = pathlib.Path(root) / "classes.txt"
    if listed.is_file():
        return [line for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [str(i) for i in range(int(labels.max(initial=0)) + 1)]


def read(path):
    """The array in one idx file (gzipped or not); a ValueError naming it when it is cut short or not idx."""
    path = pathlib.Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:  # gzip's own errors for a cut or garbled archive
        raise ValueError(f"Cannot read idx file {path}: {e}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of uint8 values: it should start with 00 00 08 and the number of dimensions.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], ">u4")) if len(raw) >= header else None
    if shape is None or len(raw) != header + int(np.prod(shape)):
        expected = f"{' x '.join(map(str, shape))} values ({int(np.prod(shape)):,} bytes)" if shape else f"{ndim} dimensions"
        raise ValueError(f"{path} is cut short or has bytes to spare: its header announces {expected}, the file holds {max(len(raw) - header, 0):,} bytes of values.")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def fit(images, image_size, channels):
    """[N, H, W] greys -> [N, height, width, channels] uint8: placed in the middle of a larger field of black
    (as LeNet-5's paper puts MNIST's 28x28 digits in a 32x32 field), else resized; greys repeated for RGB."""
    n, h, w = images.shape
    height, width = image_size
    if height >= h and width >= w:
        top, left = (height - h) // 2, (width - w) // 2
        out = np.zeros((n, height, width), np.uint8)
        out[:, top : top + h, left : left + w] = images
    else:
        from PIL import Image

        out = np.stack([np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR)) for image in images])
    out = out[..., None]
    if channels == 1:
        return out
    rgb = np.repeat(out, 3, axis=-1)
    return rgb if channels == 3 else np.concatenate([rgb, np.full_like(out, 255)], axis=-1)


def _kind(path):
    name = path.name.removesuffix(".gz")
    return "images" if name.endswith("-images-idx3-ubyte") else "labels" if name.endswith("-labels-idx1-ubyte") else None


def _split(path):
    words = path.name.split("-")
    return next((split for split, marks in SPLIT_WORDS.items() if any(mark in words for mark in marks)), None)
