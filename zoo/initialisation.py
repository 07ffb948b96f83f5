"""airbench's starts for a network trained from scratch (Keller Jordan 2024): only the starting point
changes; the network then trains as usual, and the saved model is the same plain Keras model.

Patch whitening (`training.whitening_init`): each pair of the first convolution's filters starts as one
principal direction of the training images' patches, with both signs (so that a ReLU keeps either half),
scaled to unit variance; filters beyond the patch's dimension keep their random start.

Identity (`training.dirac_init`, PyTorch's `dirac_`): the first min(inputs, filters) filters of every later
convolution start as the identity on their own input channel (1 at the kernel's centre), so each block
starts by passing its input on; the other filters keep their random start.
"""

import numpy as np

import keras

from zoo import keras_input

SAMPLE_IMAGES = 5000
EPSILON = 5e-4  # times the mean variance, added to each eigenvalue: bounds the gain of the directions the patches barely vary in


def first_conv(model):
    """The first `Conv2D` layer of `model`."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            return layer
    raise ValueError(f"Model {model.name!r} has no Conv2D layer to initialise as a whitening transform.")


def patch_covariance(inputs, kernel_size):
    """Covariance of every `kernel_size` patch of `inputs` (N, H, W, C) at every position where it fits,
    each patch flattened in the order of a Keras kernel's first three axes (height, width, channel)."""
    height, width = kernel_size
    dims = height * width * inputs.shape[-1]
    positions = (inputs.shape[1] - height + 1) * (inputs.shape[2] - width + 1)
    chunk = max(1, 2**22 // (positions * dims))  # images at a time: about 16 MB of patches
    second, total, count = np.zeros((dims, dims)), np.zeros(dims), 0
    for start in range(0, len(inputs), chunk):
        windows = np.lib.stride_tricks.sliding_window_view(inputs[start:start + chunk], (height, width), axis=(1, 2))
        patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, dims).astype(np.float32)
        second += patches.T @ patches  # float32 products within a chunk, summed over chunks in float64
        total += patches.sum(axis=0, dtype=np.float64)
        count += len(patches)
    mean = total / count
    return second / count - np.outer(mean, mean)


def whitening_filters(covariance, kernel_shape, epsilon=EPSILON):
    """Filters (height, width, channels, 2 * k) that project a patch onto the k = min(patch dimension,
    filters // 2) directions of largest variance of `covariance`, each scaled by 1 / sqrt(variance +
    `epsilon` * the mean variance), first with one sign, then with the other."""
    height, width, channels, filters = kernel_shape
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    keep = np.argsort(eigenvalues)[::-1][: min(len(eigenvalues), filters // 2)]
    floor = epsilon * np.trace(covariance) / len(covariance)  # scale-free: airbench's 5e-4 on unit-variance pixels
    directions = eigenvectors[:, keep] / np.sqrt(np.maximum(eigenvalues[keep], 0.0) + floor)
    return np.concatenate([directions, -directions], axis=1).reshape(height, width, channels, -1)


def whiten_first_conv(model, images, seed, sample=SAMPLE_IMAGES):
    """Set the first filters of `model`'s first convolution to a whitening of the patches it sees in up to
    `sample` of `images` (uint8, as the model takes them; chosen by `seed`). Returns how many filters."""
    conv = first_conv(model)
    pick = np.sort(np.random.default_rng([seed, 3]).choice(len(images), min(sample, len(images)), replace=False))
    data, batch_size = keras_input.arrays_input(images[pick], 256)
    seen = keras.Model(model.inputs, conv.input).predict(data, batch_size=batch_size, verbose=0)  # after preprocessing
    kernel = keras.ops.convert_to_numpy(conv.kernel).astype(np.float32)
    white = whitening_filters(patch_covariance(np.asarray(seen, np.float32), conv.kernel_size), kernel.shape)
    kernel[..., : white.shape[-1]] = white
    conv.kernel.assign(kernel)
    return white.shape[-1]


def dirac_convs(model):
    """Start the first min(input channels, filters) filters of every `Conv2D` after the first as the
    identity on their own channel: filter i is 1 at the centre of input channel i, 0 elsewhere. Returns
    how many convolutions changed (grouped convolutions are left as they are)."""
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and layer.groups == 1][1:]
    for conv in convs:
        kernel = keras.ops.convert_to_numpy(conv.kernel).astype(np.float32)
        height, width, inputs, filters = kernel.shape
        both = np.arange(min(inputs, filters))
        kernel[..., both] = 0.0
        kernel[height // 2, width // 2, both, both] = 1.0
        conv.kernel.assign(kernel)
    return len(convs)
