"""`--formats web`: a static page that classifies images in the browser with MediaPipe Tasks for web.

`web/` holds `index.html`, the model (`model.tflite`, a copy of the export's int8 file, else its
float32 one: its metadata carries the labels) and the JavaScript bundle and WebAssembly files of
`@mediapipe/tasks-vision` from npm, so the folder works offline from any static file server
(`python -m http.server -d web`). The user picks or drops an image and sees the top-3 classes.
The page of a one-channel model (digits, letters) also has a canvas to draw on with mouse or finger,
white on black as MNIST, classified while drawing: the strokes are placed as MNIST placed its digits
(scaled into a 20x20 box, centred by their centre of mass in a 28x28 field, and that field put in the
model's input as `zoo.idx.fit` puts it).

Opened as `index.html?image=RELATIVE_URL` it classifies that image on load. Every result goes into
`<pre id="predictions">`, one `class<TAB>probability` line each, best first, its `data-source` saying
`image` or `drawing` (for tests and scripts); `<p id="status">` reads `ready` once the model is loaded,
or the error.
"""

import contextlib
import errno
import html
import json
import os
import pathlib
import shutil
import subprocess
import tarfile
import tempfile

from zoo.data import cache_dir
from zoo.files import sha256

TASKS_VISION = "@mediapipe/tasks-vision"
TASKS_VISION_VERSION = "1.1.0"
# What the page loads: the ES module bundle, and the WebAssembly runtime in its SIMD and no-SIMD builds
# (FilesetResolver picks the one the browser supports).
BUNDLE_FILES = (
    "vision_bundle.mjs", "package.json",
    "wasm/vision_wasm_internal.js", "wasm/vision_wasm_internal.wasm",
    "wasm/vision_wasm_nosimd_internal.js", "wasm/vision_wasm_nosimd_internal.wasm",
)
MODEL_VARIANTS = ("int8", "float32")  # the page's model, in order of preference
MANIFEST = "zoo-fetched.json"  # the sha256 of each of BUNDLE_FILES as fetched


class WebError(ValueError):
    """A web page that cannot be written (no model variant for it, no npm)."""


def check_request(formats, quantize):
    """A WebError, before any work, unless `--formats web` comes with a TFLite file the page can use."""
    if "web" in formats and not ("tflite" in formats and set(MODEL_VARIANTS) & set(quantize)):
        raise WebError(
            "--formats web puts a TFLite file in the page: it needs tflite in --formats and int8 or float32 in "
            f"--quantize. Received: formats={','.join(formats)}, quantize={','.join(quantize)}"
        )


def tasks_vision_folder():
    """The unpacked npm package `@mediapipe/tasks-vision` (pinned), fetched once with `npm pack` into
    the zoo cache and checked against the sha256 recorded then on each use (35 ms); a WebError saying how
    to get npm where it is missing."""
    folder = cache_dir() / "npm" / f"tasks-vision-{TASKS_VISION_VERSION}"
    if _complete(folder):
        return folder
    npm = shutil.which("npm")
    if npm is None:
        raise WebError(
            f"The web page needs MediaPipe Tasks for web ({TASKS_VISION} from npm), and npm was not found. Install "
            "Node.js with npm (https://nodejs.org/en/download, or: apt-get install npm), then export again."
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        done = subprocess.run(
            [npm, "pack", f"{TASKS_VISION}@{TASKS_VISION_VERSION}", "--pack-destination", tmp, "--silent"],
            capture_output=True, text=True, cwd=tmp,
        )
        tarballs = list(pathlib.Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            raise WebError(f"npm could not fetch {TASKS_VISION}@{TASKS_VISION_VERSION}: {done.stderr.strip()[-300:]}")
        with tarfile.open(tarballs[0]) as archive:
            archive.extractall(tmp, filter="data")
        package = pathlib.Path(tmp) / "package"
        if not all((package / name).is_file() for name in BUNDLE_FILES):
            raise WebError(f"{TASKS_VISION}@{TASKS_VISION_VERSION} from npm lacks some of {', '.join(BUNDLE_FILES)}.")
        (package / MANIFEST).write_text(json.dumps({name: sha256(package / name) for name in BUNDLE_FILES}, indent=1))
        _move_into_place(package, folder, scratch=pathlib.Path(tmp))
    return folder


def _complete(folder):
    """Whether `folder` holds every bundle file as it was fetched (its sha256 in the manifest written then): a file
    damaged since (a failing disk, a half-done copy of the cache folder) counts as missing, and is fetched again."""
    try:
        fetched = json.loads((folder / MANIFEST).read_text())
        return all((folder / name).is_file() and sha256(folder / name) == fetched[name] for name in BUNDLE_FILES)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _move_into_place(package, folder, scratch):
    """Rename `package` to `folder` in one step. A complete `folder` is left alone: another export, which
    fetched it at the same time and finished first, may be copying from it. An incomplete one (files deleted
    by hand) is first moved into `scratch`, which is removed with it."""
    for attempt in range(3):
        if _complete(folder):
            return
        try:
            os.replace(package, folder)  # onto a missing or empty folder only
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        with contextlib.suppress(FileNotFoundError):  # another export may be moving it too
            os.replace(folder, scratch / f"incomplete-{attempt}")
    raise WebError(f"Could not put {TASKS_VISION} into {folder}: other processes keep changing it. Export again.")


def write_page(folder, variants, *, title, drawing_size=None):
    """Write `folder/web/` for the export in `folder`, whose TFLite `variants` (variant -> export.json
    entry) were written there; `drawing_size` (the model's `(height, width)`) adds the drawing canvas.
    Returns the page's export.json entry."""
    variant = next(v for v in MODEL_VARIANTS if v in variants)
    package = tasks_vision_folder()
    web = pathlib.Path(folder) / "web"
    for name in BUNDLE_FILES:
        (web / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package / name, web / name)
    shutil.copyfile(pathlib.Path(folder) / variants[variant]["file"], web / "model.tflite")
    page = PAGE.replace("{title}", html.escape(title)).replace("{drawing_size}", json.dumps(list(drawing_size) if drawing_size else None))
    (web / "index.html").write_text(page)
    return {
        "page": "web/index.html", "model": "web/model.tflite", "variant": variant, "drawing": drawing_size is not None,
        "tasks_vision": f"{TASKS_VISION}@{TASKS_VISION_VERSION}",
    }


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}: image classifier</title>
<style>
  body { font: 16px/1.4 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }
  .inputs { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
  #drop { flex: 1 1 14rem; border: 2px dashed #888; border-radius: 8px; padding: 2rem; text-align: center; }
  #drop.over { background: #eef; }
  #draw { flex: 0 0 auto; text-align: center; }
  #canvas { width: 14rem; height: 14rem; background: #000; border-radius: 8px; touch-action: none; cursor: crosshair; display: block; }
  #preview { width: 12rem; height: auto; image-rendering: pixelated; display: block; margin: 1rem 0; }
  #preview:not([src]) { display: none; }
  #predictions { display: none; }
</style>
</head>
<body>
<h1>{title}</h1>
<p>Pick or drop an image: it is classified here, in the browser, with MediaPipe Tasks for web. Nothing is uploaded.</p>
<div class="inputs">
  <div id="drop"><input type="file" id="file" accept="image/*"><br>or drop an image here</div>
  <div id="draw" hidden>
    <canvas id="canvas" width="280" height="280" aria-label="draw here"></canvas>
    <button id="clear" type="button">clear</button> draw here, white on black
  </div>
</div>
<img id="preview" alt="">
<ol id="top3"></ol>
<p id="status">loading the model...</p>
<pre id="predictions"></pre>
<script type="module">
import { FilesetResolver, ImageClassifier } from "./vision_bundle.mjs";

const DRAWING_SIZE = {drawing_size};  // [height, width] of a one-channel model's input, else null
const status = document.getElementById("status");
const predictions = document.getElementById("predictions");
let classifier;

function show(result, source) {
  const categories = [...result.classifications[0].categories].sort((a, b) => b.score - a.score);
  const top3 = document.getElementById("top3");
  top3.replaceChildren(...categories.slice(0, 3).map((c) => {
    const item = document.createElement("li");
    item.textContent = `${c.categoryName}: ${(100 * c.score).toFixed(1)}%`;
    return item;
  }));
  predictions.textContent = categories.map((c) => `${c.categoryName}\\t${c.score.toFixed(6)}`).join("\\n");
  predictions.dataset.source = source;
}

async function classify(url) {
  const image = document.getElementById("preview");
  image.src = url;
  await image.decode();
  show(classifier.classify(image), "image");
}

function classifyFile(file) {
  if (file) classify(URL.createObjectURL(file)).catch((e) => { status.textContent = `error: ${e}`; });
}

const drop = document.getElementById("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); classifyFile(e.dataTransfer.files[0]); });
document.getElementById("file").addEventListener("change", (e) => classifyFile(e.target.files[0]));

// The strokes as MNIST placed its digits: the ink's bounding box scaled into a 20x20 box, moved so its
// centre of mass sits at the centre of a 28x28 field, and that field put in the middle of the model's
// input (or scaled to it, when the input is smaller), as zoo.idx.fit places MNIST's files.
function asDigit(canvas) {
  const ink = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let top = canvas.height, left = canvas.width, bottom = -1, right = -1;
  for (let y = 0; y < canvas.height; y++) for (let x = 0; x < canvas.width; x++) {
    if (ink[4 * (y * canvas.width + x)] > 0) {
      top = Math.min(top, y); bottom = Math.max(bottom, y); left = Math.min(left, x); right = Math.max(right, x);
    }
  }
  if (bottom < 0) return null;
  const scale = 20 / Math.max(bottom - top + 1, right - left + 1);
  const width = Math.max(1, Math.round((right - left + 1) * scale)), height = Math.max(1, Math.round((bottom - top + 1) * scale));
  const box = new OffscreenCanvas(width, height);
  const boxContext = box.getContext("2d");
  boxContext.imageSmoothingQuality = "high";
  boxContext.drawImage(canvas, left, top, right - left + 1, bottom - top + 1, 0, 0, width, height);
  const grey = boxContext.getImageData(0, 0, width, height).data;
  let mass = 0, sumX = 0, sumY = 0;
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) {
    const value = grey[4 * (y * width + x)];
    mass += value; sumX += value * (x + 0.5); sumY += value * (y + 0.5);
  }
  if (mass === 0) return null;
  const field = new OffscreenCanvas(28, 28);
  const fieldContext = field.getContext("2d");
  fieldContext.fillStyle = "#000";
  fieldContext.fillRect(0, 0, 28, 28);
  fieldContext.drawImage(box, Math.round(14 - sumX / mass), Math.round(14 - sumY / mass));
  const [inputHeight, inputWidth] = DRAWING_SIZE;
  const input = document.createElement("canvas");
  input.width = inputWidth; input.height = inputHeight;
  const inputContext = input.getContext("2d");
  inputContext.fillStyle = "#000";
  inputContext.fillRect(0, 0, inputWidth, inputHeight);
  if (inputHeight >= 28 && inputWidth >= 28) inputContext.drawImage(field, Math.floor((inputWidth - 28) / 2), Math.floor((inputHeight - 28) / 2));
  else inputContext.drawImage(field, 0, 0, inputWidth, inputHeight);
  return input;
}

function setUpDrawing() {
  const canvas = document.getElementById("canvas");
  const context = canvas.getContext("2d");
  context.lineCap = context.lineJoin = "round";
  context.lineWidth = canvas.width / 14;  // MNIST's strokes are about a tenth of the digit's height
  context.strokeStyle = "#fff";
  let last = null, pending = false;
  const clear = () => {
    context.clearRect(0, 0, canvas.width, canvas.height);
    predictions.textContent = ""; delete predictions.dataset.source;
    document.getElementById("top3").replaceChildren();
  };
  const classifyDrawing = () => {
    pending = false;
    const digit = asDigit(canvas);
    if (digit && classifier) show(classifier.classify(digit), "drawing");
  };
  const at = (e) => {
    const rect = canvas.getBoundingClientRect();
    return [(e.clientX - rect.left) * canvas.width / rect.width, (e.clientY - rect.top) * canvas.height / rect.height];
  };
  const stroke = (to) => {
    context.beginPath(); context.moveTo(...last); context.lineTo(...to); context.stroke();
    last = to;
    if (!pending) { pending = true; requestAnimationFrame(classifyDrawing); }
  };
  canvas.addEventListener("pointerdown", (e) => { canvas.setPointerCapture(e.pointerId); last = at(e); stroke(last); });
  canvas.addEventListener("pointermove", (e) => { if (last) stroke(at(e)); });
  const end = () => { if (last) { last = null; classifyDrawing(); } };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  document.getElementById("clear").addEventListener("click", clear);
  document.getElementById("draw").hidden = false;
}

try {
  if (DRAWING_SIZE) setUpDrawing();
  const vision = await FilesetResolver.forVisionTasks("./wasm");
  classifier = await ImageClassifier.createFromOptions(vision, {
    baseOptions: { modelAssetPath: "./model.tflite" },
    runningMode: "IMAGE",
    maxResults: -1,
  });
  const wanted = new URLSearchParams(location.search).get("image");
  if (wanted) await classify(wanted);
  status.textContent = "ready";
} catch (e) {
  status.textContent = `error: ${e}`;
}
</script>
</body>
</html>
"""
