"""`zoo viz`: filters, feature maps per block, Grad-CAM, the HTML report (rendered in headless Chromium)."""

import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

import keras

from zoo import lenet5, vgg11_bn, viz
from zoo.cli import main

CAT = "test/cat/0003.jpg"


def test_filters_and_feature_maps_match_the_model():
    model = vgg11_bn()
    tiles = viz.filters(model)
    assert tiles.shape == (64, 3, 3, 3) and tiles.min() == 0 and tiles.max() == 1
    maps = viz.feature_maps(model, np.zeros((32, 32, 3), "uint8"))
    assert [name for name, _ in maps] == ["block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool"]
    assert [a.shape for _, a in maps] == [(16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512), (1, 1, 512)]
    # A model without zoo's block names: every convolution is shown.
    inputs = keras.Input((8, 8, 1))
    plain = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="c2")(keras.layers.Conv2D(4, 3, name="c1")(inputs)))
    assert viz.block_layers(plain) == ["c1", "c2"] and viz.filters(plain).shape == (4, 3, 3, 1)


def quadrant_data(rng, n):
    """Class 1: a bright 8x8 square somewhere on dim noise; class 0: the noise alone."""
    images = rng.integers(0, 60, size=(n, 32, 32, 3)).astype("uint8")
    labels = rng.integers(0, 2, size=n)
    for image, label in zip(images, labels):
        if label:
            top, left = rng.integers(0, 25, size=2)
            image[top : top + 8, left : left + 8] = 255
    return images, labels


def test_grad_cam_peaks_where_the_evidence_is():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images, labels = quadrant_data(rng, 3000)
    model = lenet5(num_classes=2)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(images, labels, epochs=4, batch_size=64, verbose=0)
    test_images, test_labels = quadrant_data(rng, 300)
    assert model.evaluate(test_images, test_labels, verbose=0)[1] > 0.95
    for top, left in ((3, 4), (20, 21)):  # the square in the top-left, then in the bottom-right quadrant
        image = rng.integers(0, 60, size=(32, 32, 3)).astype("uint8")
        image[top : top + 8, left : left + 8] = 255
        cam = viz.grad_cam(model, image, class_index=1)
        assert cam.shape == (32, 32) and cam.max() == pytest.approx(1.0)
        row, column = np.unravel_index(cam.argmax(), cam.shape)
        assert (row < 16, column < 16) == (top < 16, left < 16), (row, column)
        inside = cam[top : top + 8, left : left + 8].mean()
        assert inside > 2 * cam.mean()


def test_grad_cam_of_the_released_vgg16_bn_shows_where_its_top_class_is_on_real_test_images(cifar10_dir):
    """At 32x32 VGG16-BN's last 4x4 block can weigh every position negatively for a confident class (an all-zero
    map): the map then comes from the latest layer with evidence, and says which."""
    from zoo import vgg16_bn
    from zoo.data import read_image

    model = vgg16_bn(weights="cifar10")
    used = set()
    for folder in sorted((cifar10_dir / "test").iterdir()):
        image = read_image(folder / "0000.jpg", (32, 32))
        top = viz.top_classes(model, image, 1)[0][0]
        cam, layer = viz.grad_cam_and_layer(model, image, top)
        assert cam.shape == (32, 32) and cam.max() == pytest.approx(1.0) and cam.std() > 0.05, (folder.name, layer)
        assert layer in viz.grad_cam_layers(model)
        used.add(layer)
    assert viz.grad_cam_layers(model)[0] == "block4_act3"
    image = read_image(cifar10_dir / "test" / "automobile" / "0000.jpg", (32, 32))  # with the released weights of 2026-11-28
    assert viz.grad_cam(model, image, 1, "block4_act3").max() == 0  # the blank map the fallback avoids
    cam, layer = viz.grad_cam_and_layer(model, image, 1)
    assert layer != "block4_act3" and cam.max() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def report_folder(cifar10_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("viz") / "report"
    assert main(["viz", "lenet5", "--weights", "cifar10", "--image", str(cifar10_dir / CAT), "--out", str(out)]) == 0
    return out


def test_report_has_one_picture_per_block_and_valid_html(report_folder):
    files = sorted(p.name for p in report_folder.iterdir())
    assert files == [
        "feature_maps_01_block1_pool.png", "feature_maps_02_block2_pool.png", "filters.png", "grad_cam.png", "index.html", "overview.png",
    ]
    for name in files:
        if name.endswith(".png"):
            with Image.open(report_folder / name) as img:
                img.load()
                assert img.width > 100 and img.height > 100
    html = (report_folder / "index.html").read_text()
    sources = re.findall(r'src="([^"]+)"', html)
    assert sorted(sources) == [f for f in files if f.endswith(".png")]
    assert "inside the network on 0003.jpg" in html
    assert re.search(r"any evidence for the class: \w+: block\d_act\d", html)


def test_filters_only(tmp_path, capsys):
    assert main(["viz", "lenet5", "--weights", "cifar10", "--filters", "--out", str(tmp_path / "f")]) == 0
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["filters.png", "index.html"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
def test_report_renders_in_headless_chromium(report_folder, tmp_path):
    shutil.copytree(report_folder, tmp_path / "report")
    page = (tmp_path / "report" / "index.html").read_text()
    script = "<script>window.onload=()=>{document.body.dataset.loaded=[...document.images].filter(i=>i.complete&&i.naturalWidth>0).length}</script>"
    probe = tmp_path / "report" / "probe.html"
    probe.write_text(page.replace("</body>", script + "</body>"))
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout
    assert f'data-loaded="{page.count("<img ")}"' in dom
    assert "lenet5: inside the network" in dom


def test_viz_errors(tmp_path, capsys, report_folder, cifar10_dir):
    model = lenet5()
    with pytest.raises(viz.VizError, match=r"Unknown layer name\(s\) 'nope'.*Valid: image, rescaling"):
        viz.feature_maps(model, np.zeros((32, 32, 3), "uint8"), ["nope"])
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(viz.VizError, match="has no Conv2D layer"):
        viz.filters(dense)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=f"Cannot decode image file {re.escape(str(broken))}: not an image format Pillow can read"):
        viz.load_image(broken, model)
    # The CLI: an existing folder is refused, and nothing is drawn before the checks.
    before = sorted(p.name for p in report_folder.iterdir())
    assert main(["viz", "lenet5", "--weights", "cifar10", "--image", str(cifar10_dir / CAT), "--out", str(report_folder)]) == 2
    assert "exists" in capsys.readouterr().err and sorted(p.name for p in report_folder.iterdir()) == before
    assert main(["viz", "lenet5", "--weights", "none", "--image", str(broken), "--out", str(tmp_path / "x")]) == 2
    assert "Cannot decode image" in capsys.readouterr().err
    assert main(["viz", "lenet5", "--weights", "none", "--layers", "block1_conv1,nope", "--filters", "--out", str(tmp_path / "x")]) == 2
    assert "Unknown layer name(s) 'nope'" in capsys.readouterr().err
    assert main(["viz", "lenet5", "--out", str(tmp_path / "x")]) == 2
    assert "Nothing to draw" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_grad_cam_is_the_same_under_jax(tmp_path):
    """jax.grad and TensorFlow's GradientTape give the same heat map for the same weights."""
    from test_portability import run_python

    model = lenet5()
    image = np.random.default_rng(3).integers(0, 256, (32, 32, 3)).astype("uint8")
    model.save_weights(tmp_path / "w.weights.h5")
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "cam.npy", viz.grad_cam(model, image, class_index=4))
    repo = str(pathlib.Path(__file__).resolve().parents[1])
    run_python(
        f"""
        import numpy as np, keras
        from zoo import lenet5, viz
        assert keras.backend.backend() == "jax"
        model = lenet5(weights={str(tmp_path / 'w.weights.h5')!r})
        cam = viz.grad_cam(model, np.load({str(tmp_path / 'image.npy')!r}), class_index=4)
        np.testing.assert_allclose(cam, np.load({str(tmp_path / 'cam.npy')!r}), atol=1e-4)
        """,
        KERAS_BACKEND="jax", PYTHONPATH=repo, JAX_PLATFORMS="cpu",
    )
