"""Keras model -> TF SavedModel and TFLite (float32, float16, dynamic-range, int8), each verified.

    from zoo import export
    export.to_saved_model(model, "out/saved_model")                  # serving signature: uint8 images
    export.to_tflite(model, "out/model_int8.tflite", quantize="int8", representative_data=images)
    export.export_model(model, "out", quantize=export.VARIANTS, calibration=train, verification=test,
                        class_names=names)                           # all of it, verified, atomically

Every TFLite file takes a batch of one image [1, H, W, C] of raw 0-255 RGB values as float32 and
returns float32 class probabilities, and carries TFLite Metadata with its labels (`zoo.mobile`), so
MediaPipe Tasks' ImageClassifier loads it. The int8 variant quantizes everything between its input
and its softmax: its input QUANTIZE, int8 body, DEQUANTIZE and float softmax all run in LiteRT's CPU
accelerator (XNNPACK), where a uint8 input or an int8 softmax would not. Needs TensorFlow.
"""

import json
import os
import pathlib
import tempfile
import warnings

import numpy as np

import keras

from zoo import mobile, web
from zoo.litert import TFLiteModel
from zoo.data import as_rgb
from zoo.evaluation import outputs_probabilities, probabilities
from zoo.files import check_output_folder, sha256, staged_folder, write_atomically
from zoo.loading import load_keras_file

VARIANTS = ("float32", "float16", "dynamic", "int8")
# What every export must prove against the Keras model (top-1 agreement, |probability| difference).
BOUNDS = {
    "float32": {"max_abs_diff": 1e-4},
    "float16": {"agreement": 0.995},
    "dynamic": {"agreement": 0.995},
    "int8": {"agreement": 0.99, "accuracy_drop": 0.005},
}
# What MediaPipe's ImageClassifier must show for every variant: the file's names, probabilities, and
# the same top-1 as the LiteRT interpreter on the same file.
MEDIAPIPE_BOUNDS = {"max_sum_error": 1e-3, "agreement_with_interpreter": 0.999}
FORMATS = ("saved_model", "tflite", "web")


class ExportError(ValueError):
    """An export that cannot be made or that failed verification."""


def require_tensorflow_backend():
    """An ExportError unless Keras runs on TensorFlow, whose graphs the SavedModel and TFLite converter need."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ExportError(
            "SavedModel and TFLite export need the TensorFlow backend: run it with KERAS_BACKEND=tensorflow "
            f"(a .keras file saved under another backend loads there). Received: KERAS_BACKEND={backend!r}"
        )


def float32_model(model):
    """`model` with every layer computing in float32 (a copy if it was built under mixed precision).

    TFLite cannot convert bfloat16 ops, so a model trained under `mixed_bfloat16` is rebuilt from
    its config with float32 dtype policies and its weights copied over.
    """
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    config = model.get_config()
    for layer in config["layers"]:
        layer["config"]["dtype"] = "float32"
    rebuilt = model.__class__.from_config(config)
    rebuilt.set_weights([np.asarray(w, "float32") for w in model.get_weights()])
    return rebuilt


def _probabilities(model, images):
    import tensorflow as tf

    outputs = model(images, training=False)
    if outputs_probabilities(model):
        return outputs, None
    return tf.nn.softmax(outputs), outputs


def to_saved_model(model, path):
    """Export a SavedModel whose `serving_default` takes `image`: uint8 [batch, H, W, C] (0-255 RGB)
    and returns `probabilities` (and `logits` for models that output logits). A SavedModel already at
    `path` is replaced whole once the new one is written; any other file or folder there is refused."""
    require_tensorflow_backend()
    path = pathlib.Path(path)
    if path.exists() and not (path / "saved_model.pb").is_file() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} exists and is not a SavedModel, which is all this replaces: name a new folder.")
    import tensorflow as tf

    model = float32_model(model)
    height, width, channels = model.input.shape[1:]
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(image):
        probabilities, logits = _probabilities(model, tf.cast(image, tf.float32))
        return {"probabilities": probabilities} if logits is None else {"probabilities": probabilities, "logits": logits}

    archive.add_endpoint(
        "serving_default", serve, input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8, name="image")]
    )
    with staged_folder(path) as staging:  # the old SavedModel stays whole until the new one is
        archive.write_out(str(staging), verbose=False)


def _tflite_saved_model(model, path):
    """A batch-1 SavedModel with float32 0-255 input and probabilities out, for the TFLite converter.

    Its input is RGB whatever the model takes: MediaPipe's ImageClassifier refuses a 1-channel input, so a
    greyscale model gets the conversion inside (the luminance of ITU-R BT.601, as Pillow's "L": constants,
    no weights), and apps feed every zoo file the same way."""
    import tensorflow as tf

    height, width, channels = model.input.shape[1:]
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(image):
        if channels == 1:
            image = tf.reduce_sum(image * tf.constant(LUMINANCE, tf.float32), axis=-1, keepdims=True)
        return {"probabilities": _probabilities(model, image)[0]}

    archive.add_endpoint("serving_default", serve, input_signature=[tf.TensorSpec([1, height, width, 3], tf.float32, name="image")])
    archive.write_out(str(path), verbose=False)


LUMINANCE = (0.299, 0.587, 0.114)  # R, G, B weights of grey; they sum to 1, so grey repeated into RGB stays that grey


def to_tflite(model, path, *, quantize="float32", representative_data=None):
    """Convert `model` to a TFLite file with built-in ops only; returns the file's bytes.

    quantize: "float32", "float16" (weights), "dynamic" (int8 weights, float activations) or "int8"
        (int8 weights and activations from the input to the softmax, which stays float32 with the
        input and output; calibrated on `representative_data`: a few hundred raw 0-255 images
        [N, H, W, C] like the training images).
    The file has no metadata: `export_model` adds it.
    """
    require_tensorflow_backend()
    if quantize not in VARIANTS:
        raise ExportError(f"Unknown quantization. Valid: {', '.join(VARIANTS)}. Received: quantize={quantize!r}")
    model = float32_model(model)
    if quantize == "int8":
        _check_calibration(model, representative_data)
    with tempfile.TemporaryDirectory() as tmp:
        saved_model = os.path.join(tmp, "saved_model")
        _tflite_saved_model(model, saved_model)
        content = _convert(saved_model, quantize, representative_data)
    write_atomically(path, lambda tmp: pathlib.Path(tmp).write_bytes(content))
    return content


def _convert(saved_model, quantize, representative_data):
    """Run the TFLite converter on a SavedModel from `_tflite_saved_model`; returns the file's bytes."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        if quantize == "int8":
            content = _int8_with_float_softmax(converter, as_rgb(np.asarray(representative_data, "float32")))
        else:
            content = converter.convert()
    except Exception as e:  # the converter raises its own ConverterError
        raise ExportError(
            f"TFLite conversion ({quantize}) failed; the model may use ops outside the TFLite built-ins: {e}"
        ) from None
    return content


def _int8_with_float_softmax(converter, images):
    """Full-integer quantization from the float32 input to the softmax, which stays float32.

    Measured with LiteRT 2.3's benchmark tool: XNNPACK delegates neither a uint8->int8 QUANTIZE at
    the input nor an int8 SOFTMAX, so the plain full-integer file (uint8 in and out) was not fully
    accelerated; MediaPipe accepts only uint8 or float32 inputs. This file (QUANTIZE float->int8,
    int8 body, DEQUANTIZE, float SOFTMAX) is, and MediaPipe loads it. The denylist is the documented
    way to keep ops in float (tf.lite.experimental.QuantizationDebugger's selective quantization).
    """
    import tensorflow as tf

    def dataset():
        return ([image[None]] for image in images)

    converter.representative_dataset = dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.float32
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=["SOFTMAX"])
    with warnings.catch_warnings():  # it runs TensorFlow's deprecated tf.lite.Interpreter, and says so
        warnings.simplefilter("ignore", UserWarning)
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=dataset, debug_options=options)
        return debugger.get_nondebug_quantized_model()


def _check_calibration(model, images):
    expected = tuple(model.input.shape[1:])
    if images is None or len(images) == 0:
        raise ExportError("int8 quantization needs calibration data: a few hundred training images (--calibration-data).")
    if tuple(np.shape(images)[1:]) != expected:
        raise ExportError(
            f"Calibration images must have shape [N, {', '.join(map(str, expected))}] like the model input. "
            f"Received: shape={tuple(np.shape(images))}"
        )


def verify(variant, keras_probabilities, tflite_probabilities, labels=None):
    """Agreement figures of one variant and whether they meet `BOUNDS[variant]`."""
    agreement = float((keras_probabilities.argmax(1) == tflite_probabilities.argmax(1)).mean())
    figures = {
        "images": int(len(keras_probabilities)),
        "agreement": agreement,
        "max_abs_diff": float(np.abs(keras_probabilities - tflite_probabilities).max()),
    }
    if labels is not None:
        figures["keras_accuracy"] = float((keras_probabilities.argmax(1) == labels).mean())
        figures["accuracy"] = float((tflite_probabilities.argmax(1) == labels).mean())
    failures = []
    bounds = BOUNDS[variant]
    if "max_abs_diff" in bounds and figures["max_abs_diff"] > bounds["max_abs_diff"]:
        failures.append(f"max |diff| {figures['max_abs_diff']:.2e} > {bounds['max_abs_diff']:.0e}")
    if "agreement" in bounds and agreement < bounds["agreement"]:
        failures.append(f"top-1 agreement {agreement:.4f} < {bounds['agreement']}")
    if "accuracy_drop" in bounds and labels is not None:
        drop = figures["keras_accuracy"] - figures["accuracy"]
        if drop > bounds["accuracy_drop"]:
            failures.append(f"accuracy drop {drop * 100:.2f} points > {bounds['accuracy_drop'] * 100:.1f}")
    figures["bounds"] = bounds
    figures["passed"] = not failures
    return figures, failures


def export_model(
    model,
    out,
    *,
    formats=("saved_model", "tflite"),
    quantize=VARIANTS,
    calibration=None,
    verification=None,
    verification_labels=None,
    class_names=None,
    overwrite=False,
    enforce_bounds=True,
    save_keras=True,
    metadata=None,
):
    """Export `model` into the folder `out` and verify every TFLite variant against Keras and
    through MediaPipe's ImageClassifier.

    formats: `saved_model`, `tflite` and `web` (a page classifying images in the browser, see
    `zoo.web`). calibration: raw training images for int8. verification: held-out raw images (with
    `verification_labels` to measure accuracy); their figures go to `export.json`. metadata: what
    the TFLite files say of themselves (`name`, `description`, `version`, `author`, `license`).
    Everything is written to a temporary folder and moved into place only once every variant met
    its bounds (or regardless, with `enforce_bounds=False`); an existing `out` is replaced only with
    `overwrite`, and a failure leaves it as it was. `save_keras=False` leaves out the float32
    `model.keras`. Returns the `export.json` record.
    """
    require_tensorflow_backend()
    out = pathlib.Path(out)
    unknown = sorted(set(quantize) - set(VARIANTS))
    if unknown:
        raise ExportError(f"Unknown quantization. Valid: {', '.join(VARIANTS)}. Received: quantize={','.join(unknown)}")
    bad_formats = sorted(set(formats) - set(FORMATS))
    if bad_formats:
        raise ExportError(f"Unknown format. Valid: {', '.join(FORMATS)}. Received: formats={','.join(bad_formats)}")
    web.check_request(formats, quantize)
    if "tflite" in formats:
        mobile.require_mediapipe()
    check_output_folder(out, overwrite, "export")
    model = float32_model(model)
    if "tflite" in formats and "int8" in quantize:
        _check_calibration(model, calibration)
    if enforce_bounds and "tflite" in formats and (verification is None or len(verification) == 0):
        raise ExportError("Verification needs held-out images (--calibration-data gives its test split), or pass --no-verify.")
    num_classes = model.output.shape[-1]
    class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ExportError(f"{len(class_names)} class names for a model with {num_classes} outputs: labels.txt needs one per output.")
    if "web" in formats:
        web.tasks_vision_folder()  # fetched (or its error) before any conversion
    metadata = {**default_metadata(model, class_names), **(metadata or {})}

    with staged_folder(out, overwrite, "export") as staging:
        return _export_into(
            model, staging, formats, quantize, calibration, verification, verification_labels, class_names,
            enforce_bounds, save_keras, metadata,
        )


def default_metadata(model, class_names):
    """What a TFLite file says of itself unless told otherwise (a release passes its card's words)."""
    import zoo

    shown = ", ".join(class_names[:10]) + (", ..." if len(class_names) > 10 else "")
    return {
        "name": model.name,
        "description": f"{model.name} image classifier, {len(class_names)} classes ({shown}); input: an RGB image, raw 0-255 pixels"
        + (" (made grey inside)." if model.input.shape[-1] == 1 else "."),
        "version": "",
        "author": f"zoo {zoo.__version__}",
        "license": "",
    }


def _export_into(model, folder, formats, quantize, calibration, verification, labels, class_names, enforce_bounds, save_keras, metadata):
    record = {"model": model.name, "params": model.count_params(), "labels": "labels.txt", "metadata": metadata, "variants": {}}
    (folder / "labels.txt").write_text("\n".join(class_names) + "\n")
    if save_keras:
        model.save(folder / "model.keras")
        record["keras"] = {"file": "model.keras", "bytes": (folder / "model.keras").stat().st_size, "sha256": sha256(folder / "model.keras")}
    if "saved_model" in formats:
        to_saved_model(model, folder / "saved_model")
        outputs = ["probabilities"] if outputs_probabilities(model) else ["probabilities", "logits"]
        grey = model.input.shape[-1] == 1
        record["saved_model"] = {
            "path": "saved_model", "signature": "serving_default", "outputs": outputs,
            "input": f"image: uint8 [batch, H, W, {1 if grey else 3}], 0-255 {'grey' if grey else 'RGB'}",
        }
    failures = []
    if "tflite" in formats:
        failures = _export_tflite(model, folder, record["variants"], quantize, calibration, verification, labels, class_names, metadata)
    if failures and enforce_bounds:
        raise ExportError("Export failed verification (against Keras, and through MediaPipe): " + "; ".join(failures) + ". Nothing was written.")
    if "web" in formats:
        height, width, channels = model.input.shape[1:]
        drawing_size = (height, width) if channels == 1 else None
        record["web"] = web.write_page(folder, record["variants"], title=metadata["name"], drawing_size=drawing_size)
    _write_record(folder, record)
    return record


def _export_tflite(model, folder, variants, quantize, calibration, verification, labels, class_names, metadata):
    """Write each TFLite variant with its metadata, time it in LiteRT's benchmark tool and (given
    verification images) measure it against Keras and through MediaPipe; returns missed bounds."""
    measure = verification is not None and len(verification) > 0
    keras_probabilities = probabilities(model, verification) if measure else None
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        saved_model = os.path.join(tmp, "tflite_saved_model")
        _tflite_saved_model(model, saved_model)
        for variant in quantize:
            path = folder / f"model_{variant}.tflite"
            content = _convert(saved_model, variant, calibration)
            path.write_bytes(mobile.add_metadata(content, class_names=class_names, **metadata))
            tflite = TFLiteModel(path)
            entry = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256(path), **tflite.spec()}
            entry["litert_cpu"] = mobile.benchmark_tool(path, num_threads=1)
            if measure:
                tflite_probabilities = tflite.predict(verification)
                figures, problems = verify(variant, keras_probabilities, tflite_probabilities, labels)
                entry["verification"] = figures
                entry["mediapipe"], mediapipe_problems = verify_mediapipe(path, verification, tflite_probabilities, class_names)
                failures += [f"{variant}: {p}" for p in problems + mediapipe_problems]
            variants[variant] = entry
    return failures


def verify_mediapipe(path, images, interpreter_probabilities, class_names):
    """Run `path` through MediaPipe's ImageClassifier: class names from the file, probabilities that
    sum to 1, and top-1 agreement with the LiteRT interpreter (`MEDIAPIPE_BOUNDS`)."""
    try:
        classifier = mobile.MediaPipeClassifier(path)
    except mobile.MobileExtraMissing:  # a ValueError too, but an install problem, not a verdict on the file
        raise
    except ValueError as e:
        return {"loads": False, "error": str(e), "passed": False}, [str(e)]
    try:
        scores, names = classifier.classify(images)
    finally:
        classifier.close()
    figures = {
        "loads": True,
        "images": int(len(images)),
        "class_names_from_file": names == list(class_names),
        "max_sum_error": float(np.abs(scores.sum(axis=1) - 1).max()),
        "agreement_with_interpreter": float((scores.argmax(1) == interpreter_probabilities.argmax(1)).mean()),
        "bounds": MEDIAPIPE_BOUNDS,
    }
    failures = []
    if not figures["class_names_from_file"]:
        failures.append(f"MediaPipe reads the class names {names[:3]}..., not the export's {list(class_names)[:3]}...")
    if figures["max_sum_error"] > MEDIAPIPE_BOUNDS["max_sum_error"]:
        failures.append(f"MediaPipe's scores sum to 1 +- {figures['max_sum_error']:.1e} > {MEDIAPIPE_BOUNDS['max_sum_error']:.0e}")
    if figures["agreement_with_interpreter"] < MEDIAPIPE_BOUNDS["agreement_with_interpreter"]:
        failures.append(f"MediaPipe's top-1 agrees with the interpreter's on {figures['agreement_with_interpreter']:.4f} < {MEDIAPIPE_BOUNDS['agreement_with_interpreter']}")
    figures["passed"] = not failures
    return figures, [f"MediaPipe: {f}" for f in failures]


def _write_record(folder, record):
    (folder / "export.json").write_text(json.dumps(record, indent=2) + "\n")


def benchmark(folder, images, *, num_threads=1, runs=100, warmup=10):
    """Per TFLite variant in an export folder (and the Keras model there): size and single-image latency."""
    import time

    folder = pathlib.Path(folder)
    record = json.loads((folder / "export.json").read_text())

    def timed(call):
        for i in range(warmup):
            call(images[i % len(images)])
        latencies = []
        for i in range(runs):
            start = time.perf_counter()
            call(images[i % len(images)])
            latencies.append(time.perf_counter() - start)
        ms = np.asarray(latencies) * 1000
        return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "images_per_second": float(1000 / ms.mean())}

    rows = []
    if (folder / "model.keras").is_file():
        model = load_keras_file(folder / "model.keras")
        rows.append({"variant": "keras", "file": "model.keras", "bytes": (folder / "model.keras").stat().st_size,
                     **timed(lambda image: model(np.asarray(image, "float32")[None], training=False))})
    for variant, entry in record["variants"].items():
        tflite = TFLiteModel(folder / entry["file"], num_threads=num_threads)
        fully_accelerated = entry.get("litert_cpu", {}).get("fully_accelerated")  # None: an export from before it was measured
        rows.append({"variant": variant, "file": entry["file"], "bytes": entry["bytes"], **timed(tflite.invoke), "fully_accelerated": fully_accelerated})
    return {"model": record["model"], "num_threads": num_threads, "runs": runs, "results": rows}
