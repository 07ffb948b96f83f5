"""What apps see of the TFLite files: MediaPipe Tasks' ImageClassifier, LiteRT's benchmark tool, the
metadata read back, and the `--formats web` page in headless Chromium; on real CIFAR-10 test images."""

import contextlib
import functools
import http.server
import json
import pathlib
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from zoo import lenet5, mobile
from zoo.cli import main
from zoo.data import load_image_folder_split
from zoo.export import ExportError, export_model, to_tflite
from zoo.litert import TFLiteModel

from conftest import ROOT

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CHROMIUM = shutil.which("chromium")
# As the probe of these machines starts it: no background connections, which the closed network refuses.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def test_images(cifar10_dir):
    """Every 10th image of the local test half, in file order: 500 real images, 50 per class."""
    split, names = load_image_folder_split(cifar10_dir, "test", (32, 32))
    assert names == CLASSES
    return split.images[::10], split.labels[::10]


@pytest.mark.parametrize("release", ["lenet5_cifar10", "vgg11_bn_cifar10"])
def test_every_released_tflite_file_runs_in_mediapipe_with_names_and_probabilities(release, test_images):
    images, labels = test_images
    folder = ROOT / "saved_models" / release
    card = json.loads((folder / "model_card.json").read_text())
    files = sorted(folder.glob("*.tflite"))
    assert files and {f.name for f in files} == {e["file"] for e in json.loads((folder / "export.json").read_text())["variants"].values()}
    for path in files:
        classifier = mobile.MediaPipeClassifier(path)
        try:
            scores, names = classifier.classify(images)
        finally:
            classifier.close()
        assert names == CLASSES, f"{path.name}: class names come from the file"
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-3, err_msg=f"{path.name}: probabilities")
        interpreter = TFLiteModel(path).predict(images)
        assert (scores.argmax(1) == interpreter.argmax(1)).mean() >= 0.999, path.name
        accuracy = (scores.argmax(1) == labels).mean()
        assert abs(accuracy - card["accuracy"]["test_top1"]) < 0.03, f"{path.name}: {accuracy} on 500 of the card's images"


def test_the_mnist_lenet5_file_classifies_real_digits_in_mediapipe_fed_as_rgb(mnist_dir):
    """MediaPipe takes no 1-channel input: the greyscale model's file takes RGB (grey repeated), as apps feed it."""
    from zoo.data import as_rgb

    folder = ROOT / "saved_models" / "lenet5_mnist"
    test, _ = load_image_folder_split(mnist_dir, "test", (32, 32), 1)
    digits, labels = as_rgb(test.images[::10]), test.labels[::10]
    classifier = mobile.MediaPipeClassifier(folder / "model_int8.tflite")
    try:
        scores, names = classifier.classify(digits)
    finally:
        classifier.close()
    assert names == [str(i) for i in range(10)]
    interpreter = TFLiteModel(folder / "model_int8.tflite").predict(digits)
    assert (scores.argmax(1) == interpreter.argmax(1)).mean() >= 0.999 and (scores.argmax(1) == labels).mean() >= 0.99
    np.testing.assert_array_equal(TFLiteModel(folder / "model_int8.tflite").predict(test.images[:20:10]), interpreter[:2])  # grey in: made RGB


def test_the_interpreter_wrapper_runs_a_file_without_tensorflow_or_keras():
    """What an app's Python needs: LiteRT and NumPy (zoo.litert imports neither TensorFlow nor Keras)."""
    code = (
        "import sys, numpy as np; from zoo.litert import TFLiteModel; "
        f"m = TFLiteModel({str(ROOT / 'saved_models' / 'lenet5_mnist' / 'model_int8.tflite')!r}); "
        "p = m.predict(np.zeros((2, 32, 32, 1), 'uint8')); "
        "print(p.shape, round(float(p.sum()), 2), sorted({'tensorflow', 'keras'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(2, 10) 2.0 []"


def test_released_files_are_fully_delegated_in_litert_and_say_so(tmp_path):
    """LiteRT's own benchmark tool, as a user runs it: every released file runs entirely in its CPU
    accelerator (XNNPACK), int8 included (its softmax is float, see zoo.export)."""
    for folder in sorted(p for p in (ROOT / "saved_models").iterdir() if (p / "export.json").is_file()):
        record = json.loads((folder / "export.json").read_text())
        for variant, entry in record["variants"].items():
            assert entry["litert_cpu"]["fully_accelerated"] is True, (folder.name, variant)
    result = tmp_path / "result.json"
    int8 = ROOT / "saved_models" / "vgg11_bn_cifar10" / "model_int8.tflite"
    command = [sys.executable, "-m", "ai_edge_litert.tools.benchmark_litert_model", "--model", str(int8), "--num_runs", "3", "--require_full_delegation", "--result_json", str(result)]
    subprocess.run(command, check=True, capture_output=True)
    assert json.loads(result.read_text())["fully_accelerated"] is True


def test_metadata_read_back_equals_what_was_written(tmp_path):
    plain = tmp_path / "plain.tflite"
    to_tflite(lenet5(num_classes=3), plain)
    names = ["cat", "dog", "bird with a long name"]
    written = tmp_path / "with_metadata.tflite"
    written.write_bytes(mobile.add_metadata(
        plain.read_bytes(), class_names=names, name="pets", description="three pets", version="v2", author="me", license="MIT",
    ))
    metadata = mobile.read_metadata(written)
    assert {k: metadata[k] for k in ("name", "description", "version", "author", "license", "min_parser_version")} == {
        "name": "pets", "description": "three pets", "version": "v2", "author": "me", "license": "MIT", "min_parser_version": "1.0.0",
    }
    assert metadata["input"]["color_space"] == "RGB"
    assert metadata["input"]["normalization"] == {"mean": [0.0], "std": [1.0]}  # raw 0-255 pixels in
    assert metadata["input"]["stats"] == {"min": [0.0], "max": [255.0]}
    assert metadata["output"]["label_file"] == "labels.txt" and metadata["labels"] == names
    assert mobile.packed_labels(written) == names
    assert mobile.read_metadata(plain) is None
    image = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(TFLiteModel(written).predict(image), TFLiteModel(plain).predict(image))  # same model
    with pytest.raises(ValueError, match="2 class names for a model with 3 outputs"):
        mobile.add_metadata(plain.read_bytes(), class_names=names[:2], name="pets")


def test_a_file_without_metadata_still_predicts_and_mediapipe_says_why_it_needs_metadata(tmp_path, capsys, cifar10_dir):
    plain = tmp_path / "from_elsewhere.tflite"
    to_tflite(lenet5(weights="cifar10"), plain)
    cat = str(cifar10_dir / "test" / "cat" / "0000.jpg")
    assert main(["predict", str(plain), cat, "--top", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["class"] == "3"  # no labels anywhere: indices
    assert main(["info", str(plain)]) == 0
    assert "metadata: none" in capsys.readouterr().out
    with pytest.raises(ValueError, match="MediaPipe's ImageClassifier refuses .*NormalizationOptions"):
        mobile.MediaPipeClassifier(plain)


def test_zoo_info_and_bench_show_what_an_app_gets(capsys):
    int8 = ROOT / "saved_models" / "lenet5_cifar10" / "model_int8.tflite"
    assert main(["info", str(int8)]) == 0
    out = capsys.readouterr().out
    assert "input   serving_default_image:0: float32 [1, 32, 32, 3]" in out
    assert "name         lenet5_cifar10" in out and "license      Apache-2.0" in out
    assert "RGB image, normalization mean [0.0] std [1.0], range [0.0, 255.0]" in out
    assert "10 labels in labels.txt: airplane, automobile" in out
    assert main(["bench", str(ROOT / "saved_models" / "lenet5_cifar10"), "--runs", "5"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert "fully delegated (LiteRT CPU)" in rows[1]
    assert all(row.split()[-1] == "yes" for row in rows[3:]), rows


def test_without_mediapipe_export_names_the_extra_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mediapipe.tasks.metadata", None)  # as if not installed
    with pytest.raises(mobile.MobileExtraMissing, match=r"pip install 'zoo\[mobile\]'"):
        export_model(lenet5(), tmp_path / "e", formats=("tflite",), quantize=("float32",), enforce_bounds=False)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--formats", "saved_model,web"], "--formats web puts a TFLite file in the page: it needs tflite in --formats"),
        (["--formats", "tflite,web", "--quantize", "float16,dynamic"], "and int8 or float32 in --quantize"),
        (["--formats", "tflite,webpage"], "Unknown format. Valid: saved_model, tflite, web. Received: formats=webpage"),
    ],
)
def test_bad_export_requests_fail_before_any_work(args, message, tmp_path, capsys, monkeypatch):
    import zoo.export

    monkeypatch.setattr(zoo.export, "_export_into", lambda *a, **k: pytest.fail("work started"))
    out = tmp_path / "e"
    assert main(["export", "lenet5", "--weights", "cifar10", "--out", str(out), "--no-verify", *args]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_labels_of_another_count_and_an_existing_export_are_refused_intact(tmp_path, capsys, monkeypatch):
    import zoo.export

    with pytest.raises(ExportError, match="3 class names for a model with 10 outputs"):
        export_model(lenet5(), tmp_path / "e", formats=("tflite",), quantize=("float32",), class_names=["a", "b", "c"], enforce_bounds=False)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "model_int8.tflite").write_bytes(b"the user's file")
    monkeypatch.setattr(zoo.export, "_export_into", lambda *a, **k: pytest.fail("work started"))
    assert main(["export", "lenet5", "--weights", "cifar10", "--out", str(existing), "--formats", "tflite,web", "--no-verify"]) == 2
    assert "exists" in capsys.readouterr().err
    assert [p.name for p in existing.iterdir()] == ["model_int8.tflite"] and (existing / "model_int8.tflite").read_bytes() == b"the user's file"


@contextlib.contextmanager
def served(folder):
    """`folder` on a static file server on 127.0.0.1 (a free port); yields the base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def page_predictions(page, url):
    """The `class<TAB>probability` lines the page writes into #predictions once its status leaves
    "loading" (Playwright driving headless Chromium: unlike --dump-dom with a virtual time budget,
    it waits for the WebAssembly runtime, however long it takes to compile)."""
    page.goto(url)
    page.wait_for_function("document.getElementById('status').textContent !== 'loading the model...'", timeout=120_000)
    assert page.text_content("#status") == "ready", (url, page.text_content("#status"))
    text = page.text_content("#predictions")
    return [(line.split("\t")[0], float(line.split("\t")[1])) for line in text.splitlines()]


@pytest.mark.memory_heavy
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
def test_the_web_page_classifies_real_images_like_the_interpreter(tmp_path, cifar10_dir, small_cifar10, capsys):
    out = tmp_path / "export"
    args = ["export", "lenet5", "--weights", "cifar10", "--out", str(out), "--formats", "tflite,web", "--quantize", "int8",
            "--calibration-data", str(small_cifar10), "--no-verify"]  # 3,000 images to calibrate from, not 50,000 to decode
    assert main(args) == 0
    capsys.readouterr()
    web = out / "web"
    assert json.loads((out / "export.json").read_text())["web"]["variant"] == "int8"
    assert (web / "model.tflite").read_bytes() == (out / "model_int8.tflite").read_bytes()
    assert {"index.html", "vision_bundle.mjs", "wasm"} <= {p.name for p in web.iterdir()}
    images = [cifar10_dir / "test" / name / f"{i:04d}.jpg" for name in CLASSES for i in (7, 8)]  # 20 real test images
    (web / "images").mkdir()
    for image in images:
        shutil.copy(image, web / "images" / f"{image.parent.name}-{image.name}")
    interpreter = TFLiteModel(web / "model.tflite")
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright drives Chromium here: pip install -e '.[dev]'")
    with served(web) as base, playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS[1:])  # headless is its default
        page = browser.new_page()
        for image in images:
            lines = page_predictions(page, f"{base}/index.html?image=images/{image.parent.name}-{image.name}")
            assert [name for name, _ in lines] and sorted(name for name, _ in lines) == sorted(CLASSES)
            assert abs(sum(p for _, p in lines) - 1) < 1e-3 and lines == sorted(lines, key=lambda line: -line[1])
            expected = interpreter.predict(np.asarray(Image.open(image).convert("RGB"))[None])[0]
            assert lines[0][0] == CLASSES[int(expected.argmax())], image
        browser.close()


def trace(page, strokes):
    """Draw `strokes` (lists of (x, y) in 0..1 of the canvas) with the mouse, as a user draws."""
    box = page.locator("#canvas").bounding_box()
    for stroke in strokes:
        (x, y), *rest = stroke
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.mouse.down()
        for x, y in rest:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=2)
        page.mouse.up()


def pixel_strokes(digit, scale=1.0, at=(0.0, 0.0)):
    """A 28x28 digit's inked pixels as horizontal strokes, one per run of bright pixels in each row, on
    the canvas at `scale` of its width from `at` (x, y), in 0..1 of the canvas."""
    strokes = []
    point = lambda x, y: (at[0] + scale * (x + 0.5) / 28, at[1] + scale * (y + 0.5) / 28)  # noqa: E731
    for row, values in enumerate(digit):
        columns = np.flatnonzero(values > 127)
        for run in np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1) if len(columns) else []:
            strokes.append([point(run[0], row), point(run[-1], row)])
    return strokes


def drawn_class(page, strokes):
    """The page's top class once `strokes` are drawn on a cleared canvas."""
    page.click("#clear")
    trace(page, strokes)
    page.wait_for_function("document.getElementById('predictions').dataset.source === 'drawing'", timeout=10_000)
    return page.text_content("#predictions").splitlines()[0].split("\t")[0]


@pytest.mark.memory_heavy
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
def test_the_digit_page_classifies_images_and_digits_drawn_on_its_canvas(tmp_path, mnist_dir, capsys):
    """The page of the greyscale MNIST model: test digits through ?image= agree with the interpreter, and
    digits drawn with the mouse (a vertical bar; real test digits traced stroke by stroke, small in a
    corner, so the page must place them as MNIST did) are read as what they are."""
    from zoo.idx import load_split

    out = tmp_path / "export"
    assert main(["export", "lenet5", "--weights", "mnist", "--out", str(out), "--formats", "saved_model,tflite,web", "--quantize", "float32", "--no-verify"]) == 0
    capsys.readouterr()
    web, record = out / "web", json.loads((out / "export.json").read_text())
    assert record["web"]["drawing"] is True and record["saved_model"]["input"] == "image: uint8 [batch, H, W, 1], 0-255 grey"
    digits, labels, _ = load_split(mnist_dir, "test")
    fields = np.pad(digits, ((0, 0), (2, 2), (2, 2)))  # 32x32, as the model was trained
    interpreter = TFLiteModel(web / "model.tflite")
    predicted = interpreter.predict(np.repeat(fields[:300, ..., None], 3, axis=-1)).argmax(1)
    # The first test digit of each class that the model reads right (its first 3 is one of its errors).
    picked = [int(next(i for i in np.flatnonzero(labels[:300] == digit) if predicted[i] == digit)) for digit in range(10)]
    (web / "images").mkdir()
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright drives Chromium here: pip install -e '.[dev]'")
    with served(web) as base, playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS[1:])
        page = browser.new_page()
        for i in [*picked[:3], int(np.flatnonzero(predicted != labels[:300])[0])]:  # and one the model gets wrong
            Image.fromarray(fields[i]).save(web / "images" / f"{i}.png")
            lines = dict(page_predictions(page, f"{base}/index.html?image=images/{i}.png"))
            expected = interpreter.predict(np.repeat(fields[i][None, ..., None], 3, axis=-1))[0]
            np.testing.assert_allclose([lines[str(c)] for c in range(10)], expected, atol=1e-5)
        assert drawn_class(page, [[(0.5, 0.15), (0.5, 0.85)]]) == "1"
        # Drawn small in a corner, unlike MNIST's: the page must size and centre them as MNIST did.
        drawn = [drawn_class(page, pixel_strokes(digits[i], scale=0.6, at=(0.0, 0.4))) for i in picked]
        assert drawn == [str(labels[i]) for i in picked]
        browser.close()


def test_without_npm_the_web_format_says_how_to_get_it(monkeypatch, tmp_path):
    from zoo import web

    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(web.shutil, "which", lambda name: None)
    with pytest.raises(web.WebError, match=r"npm was not found. Install Node.js with npm \(https://nodejs.org/en/download, or: apt-get install npm\)"):
        web.tasks_vision_folder()


@pytest.mark.parametrize("meanwhile", ["another export put it there", "files were deleted by hand", "a file was damaged since"])
def test_fetching_the_web_bundle_never_removes_a_complete_copy_another_export_may_read(meanwhile, monkeypatch, tmp_path):
    """Two first exports at once both fetch @mediapipe/tasks-vision: the second to finish keeps the first's copy (the
    first may be copying from it) instead of deleting and replacing it. An incomplete or damaged copy is replaced."""
    import io
    import tarfile

    from zoo import web
    from zoo.files import sha256

    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "npm" / f"tasks-vision-{web.TASKS_VISION_VERSION}"

    def put(folder, text, manifest=True):  # a copy as fetching it leaves one
        for name in web.BUNDLE_FILES:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        if manifest:
            (folder / web.MANIFEST).write_text(json.dumps({name: sha256(folder / name) for name in web.BUNDLE_FILES}))

    fetches = []

    def npm_pack(command, cwd, **kwargs):  # what `npm pack` leaves: a tarball of package/...
        fetches.append(command)
        with tarfile.open(pathlib.Path(command[command.index("--pack-destination") + 1]) / "tasks-vision.tgz", "w:gz") as tgz:
            for name in web.BUNDLE_FILES:
                data = b"fetched here"
                info = tarfile.TarInfo(f"package/{name}")
                info.size = len(data)
                tgz.addfile(info, io.BytesIO(data))
        if meanwhile == "another export put it there":
            put(folder, "fetched by the other export")
        return subprocess.CompletedProcess(command, 0, "", "")

    if meanwhile == "files were deleted by hand":
        put(folder, "a leftover")
        for name in web.BUNDLE_FILES[1:]:
            (folder / name).unlink()
    elif meanwhile == "a file was damaged since":
        put(folder, "fetched before")
        (folder / web.BUNDLE_FILES[-1]).write_text("fetched bef")  # cut short
    monkeypatch.setattr(web.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(web.subprocess, "run", npm_pack)
    assert web.tasks_vision_folder() == folder
    expected = "fetched by the other export" if meanwhile == "another export put it there" else "fetched here"
    assert {(folder / name).read_text() for name in web.BUNDLE_FILES} == {expected}
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no scratch left
    assert web.tasks_vision_folder() == folder and len(fetches) == 1  # checked, and not fetched again
