"""See inside a CNN: first-layer filters, feature maps per conv-pool block, Grad-CAM, an HTML report.

    from zoo import viz, vgg16_bn
    model = vgg16_bn(weights="cifar10")
    tiles = viz.filters(model)                          # [n, kh, kw, channels] in [0, 1]
    maps = viz.feature_maps(model, image)               # [(block name, [H, W, C] activations), ...]
    heat = viz.grad_cam(model, image, class_index=3)    # [H, W] in [0, 1], over the input image
    viz.report(model, "viz/", image=image, class_names=names)   # PNGs + viz/index.html

Arrays come from the functions; `report` draws them with matplotlib (Agg backend, no display).
"""

import html
import pathlib
import re

import numpy as np

import keras

from zoo import keras_input
from zoo.data import read_image
from zoo.files import check_output_folder, staged_folder
from zoo.plots import pyplot

BLOCK_NAME = re.compile(r"^(block\d+)_")


class VizError(ValueError):
    """A model, image or layer that cannot be visualised."""


def conv_layers(model):
    """The model's Conv2D layers, in order; a VizError if it has none."""
    found = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    if not found:
        raise VizError(f"Model '{model.name}' has no Conv2D layer: there are no filters or feature maps to show.")
    return found


def filters(model):
    """The first conv layer's kernels as `[filters, kh, kw, in_channels]`, each scaled to [0, 1] on its own."""
    kernel = np.asarray(keras.ops.convert_to_numpy(conv_layers(model)[0].kernel), "float32")
    tiles = np.moveaxis(kernel, -1, 0)  # [kh, kw, in, out] -> [out, kh, kw, in]
    low = tiles.min(axis=(1, 2, 3), keepdims=True)
    high = tiles.max(axis=(1, 2, 3), keepdims=True)
    return (tiles - low) / np.maximum(high - low, 1e-12)


def block_layers(model, layer_names=None):
    """Names of the layers whose outputs are shown: the given ones (checked), else the last layer of
    every conv-pool block (`block{i}_*`), else every Conv2D layer of a model built elsewhere."""
    names = [layer.name for layer in model.layers]
    if layer_names:
        unknown = [n for n in layer_names if n not in names]
        if unknown:
            raise VizError(f"Unknown layer name(s) {', '.join(map(repr, unknown))} in model '{model.name}'. Valid: {', '.join(names)}")
        return list(layer_names)
    conv_layers(model)
    last = {}
    for layer in model.layers:
        match = BLOCK_NAME.match(layer.name)
        if match:
            last[match.group(1)] = layer.name
    return list(last.values()) or [layer.name for layer in conv_layers(model)]


def feature_maps(model, image, layer_names=None):
    """`[(layer name, activations [H, W, C])]` of one raw 0-255 image, after every conv-pool block."""
    names = block_layers(model, layer_names)
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    data, batch_size = keras_input.arrays_input(_batch(model, image), 1)
    outputs = probe.predict(data, batch_size=batch_size, verbose=0)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [(name, np.asarray(out[0], "float32")) for name, out in zip(names, outputs)]


def grad_cam_layers(model, min_size=4):
    """The layers Grad-CAM may use, latest first: 4D outputs of at least `min_size` x `min_size` that are
    not pooling or dropout, i.e. the activations of the later convolutions (zoo models: `block{n}_act{k}`).
    On 32x32 inputs VGG's last convolutions see 2x2 maps, too coarse to point at anything."""
    conv_layers(model)
    skip = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.Dropout, keras.layers.InputLayer)
    candidates = [layer for layer in model.layers if len(layer.output.shape) == 4 and not isinstance(layer, skip)]
    large = [layer for layer in candidates if min(layer.output.shape[1:3]) >= min_size]
    return [layer.name for layer in reversed(large or candidates[-1:])]


def grad_cam_layer(model, min_size=4):
    """The default Grad-CAM layer: the latest of `grad_cam_layers`."""
    return grad_cam_layers(model, min_size)[0]


def grad_cam(model, image, class_index, layer_name=None):
    """Grad-CAM (Selvaraju et al. 2017) of `class_index` for one raw 0-255 image: `[H, W]` in [0, 1].

    The gradient of the class score (the logit, or the probability for a softmax model) with respect
    to the chosen layer's activations weights its channels. Gradients need the backend's autodiff:
    TensorFlow's GradientTape, `jax.grad` or torch's autograd; other backends raise a VizError.
    Without `layer_name`, see `grad_cam_and_layer`.
    """
    return grad_cam_and_layer(model, image, class_index, layer_name)[0]


def grad_cam_and_layer(model, image, class_index, layer_name=None):
    """`(heat map, layer)`. Without `layer_name`: the latest layer of `grad_cam_layers` whose map has any
    positive evidence for the class (a late layer can weigh every position negatively, e.g. VGG16-BN's last
    4x4 block for a confident prediction: an all-zero map that says nothing); the latest one if none has."""
    names = [layer_name] if layer_name else grad_cam_layers(model)
    block_layers(model, names)
    batch = _batch(model, image)
    for name in names:
        layer = model.get_layer(name)
        head = keras.Model(model.input, layer.output)
        tail = keras.Model(layer.output, model.output)
        activations = keras.ops.convert_to_numpy(head(batch, training=False)).astype("float32")
        gradients = _gradient(lambda a: tail(a, training=False)[0, class_index], activations)
        weights = gradients[0].mean(axis=(0, 1))
        cam = np.maximum((activations[0] * weights).sum(axis=-1), 0)
        if cam.max() > 0:
            break
    cam = _resize(cam, model.input.shape[1:3])
    return (cam / cam.max() if cam.max() > 0 else cam), name


def _gradient(score, activations):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        a = tf.convert_to_tensor(activations)
        with tf.GradientTape() as tape:
            tape.watch(a)
            value = score(a)
        return tape.gradient(value, a).numpy()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(score)(activations))
    if backend == "torch":
        import torch

        a = torch.tensor(activations, requires_grad=True)  # Keras moves it to its device; the gradient flows back
        score(a).backward()
        return a.grad.detach().cpu().numpy()
    raise VizError(f"Grad-CAM needs gradients from the TensorFlow, JAX or torch backend. Received: KERAS_BACKEND={backend!r}")


def _resize(array, size):
    from PIL import Image

    height, width = size
    return np.asarray(Image.fromarray(array.astype("float32"), mode="F").resize((width, height), Image.BILINEAR))


def _batch(model, image):
    expected = tuple(model.input.shape[1:])
    image = np.asarray(image)
    if image.shape != expected:
        raise VizError(f"The image must have the model's input shape {expected}. Received: shape={image.shape}")
    return image[None].astype("float32")


def load_image(path, model):
    """A raw 0-255 image from a file, resized to the model's input; a ValueError naming an undecodable file."""
    height, width, channels = model.input.shape[1:]
    return read_image(path, (height, width), channels)


def top_classes(model, image, k):
    """`[(class index, probability)]` of the `k` most probable classes."""
    from zoo.evaluation import probabilities

    probs = probabilities(model, _batch(model, image))[0]
    return [(int(i), float(probs[i])) for i in np.argsort(probs)[::-1][:k]]


# Drawing -------------------------------------------------------------------------------------


def plot_filters(tiles, path, title):
    plt = pyplot()
    columns = int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.9, rows * 0.9 + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(tiles):
            tile = tiles[i]
            ax.imshow(tile if tile.shape[-1] == 3 else tile.mean(axis=-1), cmap=None if tile.shape[-1] == 3 else "gray", interpolation="nearest")
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def plot_feature_maps(name, activations, path, max_channels=16):
    """The `max_channels` strongest channels (highest mean activation) of one layer's output."""
    plt = pyplot()
    height, width, channels = activations.shape
    strongest = np.argsort(activations.mean(axis=(0, 1)))[::-1][:max_channels]
    columns = min(8, len(strongest))
    rows = int(np.ceil(len(strongest) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.2, rows * 1.2 + 0.7), squeeze=False)
    for ax, channel in zip(axes.flat, strongest):
        ax.imshow(activations[:, :, channel], cmap="viridis", interpolation="nearest")
        ax.set_title(f"ch {channel}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{name}: output {height}x{width}x{channels}, {channels} channels ({len(strongest)} strongest shown)", fontsize=9)
    _save(fig, path)


def plot_overview(maps, input_shape, path):
    """Spatial size shrinking (top) while the channel count grows (bottom), block by block."""
    plt = pyplot()
    names = ["input", *(name for name, _ in maps)]
    sizes = [f"{input_shape[0]}x{input_shape[1]}", *(f"{a.shape[0]}x{a.shape[1]}" for _, a in maps)]
    heights = [input_shape[0], *(a.shape[0] for _, a in maps)]
    channels = [input_shape[-1], *(a.shape[-1] for _, a in maps)]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(max(5, len(names) * 1.1), 4.6))
    top.plot(names, heights, color="#c0392b", marker="o")
    for i, (h, label) in enumerate(zip(heights, sizes)):
        top.annotate(label, (i, h), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    top.set(ylabel="map size (pixels)", ylim=(0, max(heights) * 1.3), title="Deeper blocks: smaller maps, more channels")
    bottom.bar(names, channels, color="#8fb3d9")
    for i, c in enumerate(channels):
        bottom.annotate(str(c), (i, c), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=8)
    bottom.set(ylabel="channels", ylim=(0, max(channels) * 1.2))
    plt.setp(bottom.get_xticklabels(), rotation=30, ha="right")
    _save(fig, path)


def plot_grad_cam(image, cams, path):
    """The image, then one Grad-CAM overlay per `(label, probability, heat map)`."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(cams) + 1, figsize=(2.4 * (len(cams) + 1), 2.8), squeeze=False)
    shown = image if image.shape[-1] == 3 else image[..., 0]
    axes[0, 0].imshow(shown.astype("uint8"), cmap=None if image.shape[-1] == 3 else "gray")
    axes[0, 0].set_title("input", fontsize=8)
    for ax, (label, probability, cam) in zip(axes[0, 1:], cams):
        ax.imshow(shown.astype("uint8"), cmap=None if image.shape[-1] == 3 else "gray")
        ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(f"{label}: {probability:.1%}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    _save(fig, path)


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


# The report ---------------------------------------------------------------------------------


def report(model, out, *, image=None, image_name="image", class_names=None, layer_names=None, top_k=3, overwrite=False):
    """Write the pictures and `index.html` into the folder `out`; returns `[(file, caption)]`.

    The first convolution's filters; with an image, also its feature maps per block, the block
    overview and Grad-CAM of the `top_k` classes. `out` must not exist unless `overwrite`
    (it is replaced only once everything was drawn).
    """
    out = pathlib.Path(out)
    check_output_folder(out, overwrite, "viz")
    names = block_layers(model, layer_names)  # errors before any drawing
    if image is not None:
        _batch(model, image)
    with staged_folder(out, overwrite, "viz") as staging:
        items = _draw(model, staging, image, class_names, names, top_k)
        (staging / "index.html").write_text(_html(model, items, image_name if image is not None else None))
    return items


def _draw(model, folder, image, class_names, names, top_k):
    tiles = filters(model)
    first = conv_layers(model)[0]
    plot_filters(tiles, folder / "filters.png", f"{first.name}: {len(tiles)} filters of {tiles.shape[1]}x{tiles.shape[2]}x{tiles.shape[3]}")
    items = [("filters.png", f"The {len(tiles)} filters of the first convolution ({first.name}), each "
              f"{tiles.shape[1]}x{tiles.shape[2]} pixels over {tiles.shape[3]} input channels, scaled to full contrast one by one. "
              "Each slides over the image and responds where a patch looks like it.")]
    if image is None:
        return items
    maps = feature_maps(model, image, names)
    plot_overview(maps, tuple(model.input.shape[1:]), folder / "overview.png")
    items.append(("overview.png", "From block to block, pooling shrinks the feature maps while the number of channels grows: "
                  "deeper blocks see larger patterns, described by more features."))
    for i, (name, activations) in enumerate(maps, start=1):
        file = f"feature_maps_{i:02d}_{name}.png"
        plot_feature_maps(name, activations, folder / file)
        h, w, c = activations.shape
        items.append((file, f"{name}: {c} feature maps of {h}x{w}, the strongest shown; bright means the channel's pattern is present there."))
    class_names = class_names or [str(i) for i in range(model.output.shape[-1])]
    cams, layers = [], []
    for c, p in top_classes(model, image, top_k):
        cam, layer = grad_cam_and_layer(model, image, c)
        cams.append((class_names[c], p, cam))
        layers.append(f"{class_names[c]}: {layer}")
    plot_grad_cam(np.asarray(image), cams, folder / "grad_cam.png")
    items.append(("grad_cam.png", f"Grad-CAM of the {len(cams)} most probable classes: red marks the regions whose "
                  f"features raised that class's score most (at the latest layer with a map of at least 4x4 that holds "
                  f"any evidence for the class: {', '.join(layers)})."))
    return items


def _html(model, items, image_name):
    figures = "\n".join(
        f'<figure><img src="{html.escape(file)}" alt="{html.escape(file)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        for file, caption in items
    )
    subject = f" on {html.escape(image_name)}" if image_name else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(model.name)}: inside the network</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}}
figure{{margin:2em 0}}img{{max-width:100%;border:1px solid #ddd}}figcaption{{color:#555;font-size:.9em}}</style>
</head><body>
<h1>{html.escape(model.name)}: inside the network{subject}</h1>
<p>{model.count_params():,} parameters, input {"x".join(map(str, model.input.shape[1:]))}, {len(conv_layers(model))} convolutions.</p>
{figures}
</body></html>
"""
