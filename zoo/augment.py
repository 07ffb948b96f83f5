"""Random crop, flip and cutout of uint8 image batches: drawn on the host, applied on the host or on the device.

Each batch's random numbers are drawn with NumPy from its own stream (`draw`): a few integers per image,
microseconds. The pixels are then moved by `apply` (NumPy, on the host) or by `apply_on_device` (one
gather and one mask in `keras.ops`, so on the accelerator of any backend, jitted under JAX). Both give
the same images, bit for bit, from the same draw: moving the work to the device changes nothing but
where it runs, and a run stays reproducible from (seed, epoch, batch index).
"""

import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True)
class Draw:
    """One batch's random numbers. shift: [2, N] row and column offsets of the crop (None: no crop);
    flipped: [N] bools (None: no flip); corner: [2, N] top and left of the cutout square (None: none).
    reflect: the crop's border mirrors the image instead of being zero."""

    shift: np.ndarray | None
    flipped: np.ndarray | None
    corner: np.ndarray | None
    cutout: int = 0
    reflect: bool = False


PADDING_MODES = ("constant", "reflect")


def check(crop_padding, cutout, padding_mode="constant"):
    if crop_padding < 0 or cutout < 0:
        raise ValueError(f"crop_padding and cutout must be >= 0 (0: off). Received: crop_padding={crop_padding!r}, cutout={cutout!r}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}. Received: padding_mode={padding_mode!r}")


def draw(n, height, width, rng, *, crop_padding=4, flip=True, cutout=0, padding_mode="constant"):
    """The random numbers for N images of height x width.

    crop_padding: pad by this many pixels, then crop back at a random offset (0: off).
    flip: flip half of the images horizontally.
    cutout: side of a square zeroed at a random centre (DeVries & Taylor 2017; 0: off).
    padding_mode: "constant" pads with zeros (torchvision's default); "reflect" mirrors the image about its
    edge pixels, `d c b | a b c d | c b a` (NumPy's and PyTorch's reflect, what Page and airbench pad with).
    """
    check(crop_padding, cutout, padding_mode)
    shift = flipped = corner = None
    if crop_padding:
        p = min(crop_padding, height - 1, width - 1)
        shift = rng.integers(-p, p + 1, size=(2, n))
    if flip:
        flipped = rng.random(n) < 0.5
    if cutout:
        corner = np.stack([rng.integers(-(cutout // 2), size - cutout // 2, size=n) for size in (height, width)])
    return Draw(shift, flipped, corner, cutout, padding_mode == "reflect")


def _reflected(index, size, where=np.where):
    """Indices outside [0, size) mirrored back inside about the edge pixels (one reflection: |shift| < size).
    `where`: NumPy's, or `keras.ops.where` on the device."""
    index = where(index < 0, -index, index)
    return where(index > size - 1, 2 * (size - 1) - index, index)


def alternating_flips(half, epoch):
    """Which images to flip in `epoch` under airbench's derandomized flip (Jordan 2024). `half` [N] bools,
    drawn once per run, marks the images flipped in even epochs; odd epochs flip the others. So any two
    epochs in a row show every image both ways (random flips show it the same way twice half the time)."""
    return half ^ bool(epoch % 2)


def apply(images, d):
    """`images` [N, H, W, C] uint8 augmented by the draw `d`, with NumPy (a new array; `images` is kept)."""
    n, h, w, _ = images.shape
    out = images
    if d.shift is not None and d.reflect:  # one gather: each pixel from its mirrored source
        rows = _reflected(np.arange(h)[None, :] + d.shift[0][:, None], h)
        cols = _reflected(np.arange(w)[None, :] + d.shift[1][:, None], w)
        out = images[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    elif d.shift is not None:
        # A crop of the zero-padded image is the image shifted by (dy, dx) with zero fill.
        # Shift rows, then columns, with one vectorised copy per offset value (no padded copy).
        p = int(np.abs(d.shift).max(initial=0))
        for axis in (1, 2):
            shifted = np.zeros_like(out)
            size = out.shape[axis]
            for offset in range(-p, p + 1):
                chosen = np.flatnonzero(d.shift[axis - 1] == offset)
                if chosen.size:
                    target = [chosen, slice(None), slice(None)]
                    source = [chosen, slice(None), slice(None)]
                    target[axis] = slice(max(0, -offset), size - max(0, offset))
                    source[axis] = slice(max(0, offset), size + min(0, offset))
                    shifted[tuple(target)] = out[tuple(source)]
            out = shifted
    if d.flipped is not None:
        out = out.copy() if out is images else out
        out[d.flipped] = out[d.flipped, :, ::-1]
    if d.corner is not None:
        out = out.copy() if out is images else out
        for image, y, x in zip(out, *d.corner):  # a slice per image: faster than any mask here
            image[max(y, 0) : y + d.cutout, max(x, 0) : x + d.cutout] = 0
    return out


def augment(images, rng, **settings):
    """Randomly augment a uint8 batch [N, H, W, C] on the host, each image with its own draw (`settings`: `draw`'s)."""
    n, h, w, _ = images.shape
    return apply(images, draw(n, h, w, rng, **settings))


def apply_on_device(images, d):
    """`images` (a backend tensor [N, H, W, C], uint8, where it lives) augmented by the draw `d`, as `apply`
    would: every output pixel is gathered from its source pixel (or zero) in one `take`, then the cutout
    square is masked. Jitted under JAX, so one call is one fused device program."""
    from keras import backend

    arrays = {k: np.asarray(v, "int32") for k, v in (("shift", d.shift), ("flipped", d.flipped), ("corner", d.corner)) if v is not None}
    if backend.backend() == "jax":
        return _jitted(d.cutout, d.reflect)(images, **arrays)
    return _on_device(images, cutout=d.cutout, reflect=d.reflect, **arrays)


def _on_device(images, *, shift=None, flipped=None, corner=None, cutout=0, reflect=False):
    from keras import ops

    n, h, w, c = images.shape
    rows = ops.broadcast_to(ops.arange(h, dtype="int32")[None, :, None], (n, h, w))
    cols = ops.broadcast_to(ops.arange(w, dtype="int32")[None, None, :], (n, h, w))
    src_rows, src_cols = rows, cols
    if flipped is not None:  # the flip comes after the crop: output column j reads the crop's column w-1-j
        src_cols = ops.where(ops.convert_to_tensor(flipped)[:, None, None] > 0, w - 1 - cols, cols)
    if shift is not None:
        shift = ops.convert_to_tensor(shift)
        src_rows, src_cols = rows + shift[0][:, None, None], src_cols + shift[1][:, None, None]
        if reflect:
            src_rows, src_cols = _reflected(src_rows, h, ops.where), _reflected(src_cols, w, ops.where)
    inside = (src_rows >= 0) & (src_rows < h) & (src_cols >= 0) & (src_cols < w)
    if corner is not None:
        corner = ops.convert_to_tensor(corner)
        top, left = corner[0][:, None, None], corner[1][:, None, None]
        inside &= ~((rows >= top) & (rows < top + cutout) & (cols >= left) & (cols < left + cutout))
    image = ops.arange(n, dtype="int32")[:, None, None]
    flat = (image * h + ops.clip(src_rows, 0, h - 1)) * w + ops.clip(src_cols, 0, w - 1)
    pixels = ops.take(ops.reshape(images, (n * h * w, c)), ops.reshape(flat, (-1,)), axis=0)
    pixels = ops.reshape(pixels, (n, h, w, c))
    return ops.where(inside[..., None], pixels, ops.zeros_like(pixels))


@functools.cache
def _jitted(cutout, reflect):
    """One jitted function per cutout size and padding mode (JAX traces again per batch shape and set of draws given)."""
    import jax

    return jax.jit(lambda images, **arrays: _on_device(images, cutout=cutout, reflect=reflect, **arrays))
