"""What the mobile SDKs see of a `.tflite` file: its TFLite Metadata (written and read back), MediaPipe
Tasks' ImageClassifier running it, and whether LiteRT's CPU accelerator runs it fully delegated.

The metadata is the schema that MediaPipe Tasks (Android, iOS, web, Python) and the LiteRT support
libraries read: model name, description, version, author and license; the input as an RGB image with
the NormalizationOptions that turn raw 0-255 pixels into the input tensor's values (mean 0, std 1:
zoo models take raw pixels and rescale inside) and min/max stats; the output as class probabilities
with `labels.txt` packed into the file as its TENSOR_AXIS_LABELS file (a zip archive appended to the
model, as MediaPipe expects it).

It is written here with the flatbuffers classes generated from the metadata and model schemas, which
mediapipe ships (`pip install 'zoo[mobile]'`). Not with mediapipe's own `metadata_writers`: in
mediapipe 1.2.x they import a compiled module the wheels no longer contain
(`_pywrap_metadata_version`, used only for the minimum parser version); the 0.10.x writers that work
pin numpy<2 and protobuf 4, which cannot live beside TensorFlow 2.21; and their image classifier
writer fixes the name and description and writes no version, author or license. tflite-support is
unmaintained. Every field written here belongs to metadata schema 1.0.0, the minimum parser version
recorded (the schema marks later fields "Added in: 1.x").
"""

import io
import json
import pathlib
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

METADATA_NAME = "TFLITE_METADATA"  # the model's metadata entry that holds the metadata buffer
METADATA_IDENTIFIER = b"M001"
MODEL_IDENTIFIER = b"TFL3"
MIN_PARSER_VERSION = "1.0.0"
LABELS_FILE = "labels.txt"
EXTRA = "pip install 'zoo[mobile]'"


class MobileExtraMissing(ValueError):
    """mediapipe, which writes and checks what the mobile SDKs read, is not installed."""


def _schemas():
    try:
        from mediapipe.tasks.metadata import metadata_schema_py_generated as metadata_fb
        from mediapipe.tasks.metadata import schema_py_generated as model_fb
    except ImportError:
        raise MobileExtraMissing(
            f"TFLite files for apps carry MediaPipe metadata, written and checked with mediapipe: {EXTRA}"
        ) from None
    return metadata_fb, model_fb


def require_mediapipe():
    """A MobileExtraMissing error, before any work, where mediapipe is not installed."""
    _schemas()


def add_metadata(model_bytes, *, class_names, name, description="", version="", author="", license="", value_range=(0, 255)):
    """`model_bytes` (a .tflite file's content, without metadata) with image classifier metadata and
    `class_names` packed as its labels file. The input takes raw RGB pixels in `value_range`."""
    import flatbuffers

    metadata_fb, model_fb = _schemas()
    model = model_fb.ModelT.InitFromObj(model_fb.Model.GetRootAs(model_bytes, 0))
    if len(model.subgraphs) != 1 or len(model.subgraphs[0].inputs) != 1 or len(model.subgraphs[0].outputs) != 1:
        raise ValueError("Image classifier metadata needs a model with one input and one output tensor.")
    output_tensor = model.subgraphs[0].tensors[model.subgraphs[0].outputs[0]]
    if int(output_tensor.shape[-1]) != len(class_names):
        raise ValueError(f"{len(class_names)} class names for a model with {int(output_tensor.shape[-1])} outputs.")

    def tensor(name, description, kind, properties, low, high):
        t = metadata_fb.TensorMetadataT()
        t.name, t.description = name, description
        t.content = metadata_fb.ContentT()
        t.content.contentPropertiesType, t.content.contentProperties = kind, properties
        t.stats = metadata_fb.StatsT()
        t.stats.min, t.stats.max = [float(low)], [float(high)]
        return t

    rgb = metadata_fb.ImagePropertiesT()
    rgb.colorSpace = metadata_fb.ColorSpaceType.RGB
    image = tensor(
        "image", f"RGB image, raw pixel values in [{value_range[0]}, {value_range[1]}] (the model rescales them).",
        metadata_fb.ContentProperties.ImageProperties, rgb, *value_range,
    )
    normalization = metadata_fb.ProcessUnitT()
    normalization.optionsType = metadata_fb.ProcessUnitOptions.NormalizationOptions
    normalization.options = metadata_fb.NormalizationOptionsT()
    normalization.options.mean, normalization.options.std = [0.0], [1.0]  # (pixel - 0) / 1: raw pixels
    image.processUnits = [normalization]
    probabilities = tensor(
        "probabilities", f"Probabilities of the {len(class_names)} classes (softmax; they sum to 1).",
        metadata_fb.ContentProperties.FeatureProperties, metadata_fb.FeaturePropertiesT(), 0, 1,
    )
    labels = metadata_fb.AssociatedFileT()
    labels.name = LABELS_FILE
    labels.description = "Class names, one per line, in the order of the output."
    labels.type = metadata_fb.AssociatedFileType.TENSOR_AXIS_LABELS
    probabilities.associatedFiles = [labels]

    subgraph = metadata_fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata, subgraph.outputTensorMetadata = [image], [probabilities]
    metadata = metadata_fb.ModelMetadataT()
    metadata.name, metadata.description, metadata.version = name, description, version
    metadata.author, metadata.license = author, license
    metadata.subgraphMetadata = [subgraph]
    metadata.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(0)
    builder.Finish(metadata.Pack(builder), METADATA_IDENTIFIER)

    buffer = model_fb.BufferT()
    buffer.data = np.frombuffer(bytes(builder.Output()), np.uint8)
    model.buffers.append(buffer)
    entry = model_fb.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_NAME] + [entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), MODEL_IDENTIFIER)
    out = io.BytesIO(bytes(builder.Output()))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:  # appended, as MediaPipe reads it
        archive.writestr(LABELS_FILE, "\n".join(class_names) + "\n")
    return out.getvalue()


def read_metadata(path):
    """The metadata of a `.tflite` file as a dict (None for a file without): name, description,
    version, author, license, min_parser_version, input (color space, normalization, stats), output
    (stats, label file name) and `labels`, read from the packed file."""
    metadata_fb, model_fb = _schemas()
    content = pathlib.Path(path).read_bytes()
    model = model_fb.Model.GetRootAs(content, 0)
    index = next((model.Metadata(i).Buffer() for i in range(model.MetadataLength()) if model.Metadata(i).Name() == METADATA_NAME.encode()), None)
    if index is None:
        return None
    data = model.Buffers(index).DataAsNumpy().tobytes()
    metadata = metadata_fb.ModelMetadataT.InitFromObj(metadata_fb.ModelMetadata.GetRootAs(data, 0))
    subgraph = metadata.subgraphMetadata[0]
    image, output = subgraph.inputTensorMetadata[0], subgraph.outputTensorMetadata[0]
    normalization = next((u.options for u in image.processUnits or [] if u.optionsType == metadata_fb.ProcessUnitOptions.NormalizationOptions), None)
    label_file = next((f.name.decode() for f in output.associatedFiles or [] if f.type == metadata_fb.AssociatedFileType.TENSOR_AXIS_LABELS), None)

    def text(value):
        return value.decode() if isinstance(value, bytes) else value

    def floats(values):
        return [float(v) for v in values] if values is not None else None

    def stats(tensor):
        return {"min": floats(tensor.stats.min), "max": floats(tensor.stats.max)} if tensor.stats else None

    is_image = image.content is not None and image.content.contentPropertiesType == metadata_fb.ContentProperties.ImageProperties
    return {
        "name": text(metadata.name), "description": text(metadata.description), "version": text(metadata.version),
        "author": text(metadata.author), "license": text(metadata.license),
        "min_parser_version": text(metadata.minParserVersion),
        "input": {
            "name": text(image.name),
            "color_space": {1: "RGB", 2: "GRAYSCALE"}.get(image.content.contentProperties.colorSpace, "UNKNOWN") if is_image else None,
            "normalization": {"mean": floats(normalization.mean), "std": floats(normalization.std)} if normalization else None,
            "stats": stats(image),
        },
        "output": {"name": text(output.name), "stats": stats(output), "label_file": label_file},
        "labels": packed_labels(path, label_file) if label_file else None,
    }


def describe(path):
    """What an app sees of a .tflite file, as lines of text: its tensors, metadata and labels (`zoo info`)."""
    from zoo.litert import TFLiteModel

    if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"No such TFLite file: {path}")
    spec, metadata = TFLiteModel(path).spec(), read_metadata(path)
    lines = [f"{path}: {pathlib.Path(path).stat().st_size:,} bytes"]
    for side in ("input", "output"):
        tensor, quantization = spec[side], spec[side]["quantization"]
        quantized = f", quantized (scale {quantization['scale']:.6g}, zero point {quantization['zero_point']})" if quantization else ""
        lines.append(f"{side:<7} {tensor['name']}: {tensor['dtype']} {tensor['shape']}{quantized}")
    if metadata is None:
        return lines + ["metadata: none (MediaPipe Tasks needs it; zoo export writes it)"]
    lines.append(f"metadata (min parser version {metadata['min_parser_version']}):")
    lines += [f"  {key:<12} {metadata[key] or '-'}" for key in ("name", "description", "version", "author", "license")]
    image, output, labels = metadata["input"], metadata["output"], metadata["labels"] or []
    normalization, stats = image["normalization"] or {}, image["stats"]
    value_range = [stats["min"][0], stats["max"][0]] if stats else None
    lines.append(f"  input        {image['color_space']} image, normalization mean {normalization.get('mean')} std {normalization.get('std')}, range {value_range}")
    shown = ", ".join(labels[:10]) + (", ..." if len(labels) > 10 else "")
    lines.append(f"  output       {output['name']}, {len(labels)} labels in {output['label_file']}: {shown}")
    return lines


def packed_labels(path, name=LABELS_FILE):
    """The labels file `name` packed in a .tflite file (a zip archive at its end, as `add_metadata`
    writes it; None if it has none). Needs no mediapipe."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        return archive.read(name).decode().splitlines() if name in archive.namelist() else None


class MediaPipeClassifier:
    """A `.tflite` file run by MediaPipe Tasks' ImageClassifier, the task graph Android, iOS and web
    apps run: `classify(images)` -> (probabilities [N, classes] by class index, class names)."""

    def __init__(self, path):
        require_mediapipe()
        from mediapipe.tasks.python.core.base_options import BaseOptions
        from mediapipe.tasks.python.vision import ImageClassifier, ImageClassifierOptions

        options = ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=-1)
        try:
            self.classifier = ImageClassifier.create_from_options(options)
        except Exception as e:  # its status codes become RuntimeError, ValueError, FileNotFoundError, ...
            raise ValueError(f"MediaPipe's ImageClassifier refuses {path}: {e}") from None

    def classify(self, images):
        import mediapipe

        from zoo.data import as_rgb

        probabilities, names = None, {}
        for row, image in enumerate(as_rgb(np.asarray(images, np.uint8))):  # a greyscale model's file takes RGB
            result = self.classifier.classify(mediapipe.Image(image_format=mediapipe.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
            categories = result.classifications[0].categories
            if probabilities is None:
                probabilities = np.zeros((len(images), len(categories)))
            for category in categories:
                probabilities[row, category.index] = category.score
                names[category.index] = category.category_name
        return probabilities, [names.get(i) for i in range(probabilities.shape[1])]

    def close(self):
        self.classifier.close()


def benchmark_tool(path, *, num_threads=1, runs=50, warmup=5):
    """LiteRT's benchmark tool (`python -m ai_edge_litert.tools.benchmark_litert_model`) on `path` with
    its CPU accelerator: `{"fully_accelerated": bool, "median_ms": float, ...}` as it reports them."""
    with tempfile.TemporaryDirectory() as tmp:
        result = pathlib.Path(tmp) / "result.json"
        command = [
            sys.executable, "-m", "ai_edge_litert.tools.benchmark_litert_model", "--model", str(path),
            "--num_threads", str(num_threads), "--num_runs", str(runs), "--warmup_runs", str(warmup),
            "--result_json", str(result),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not result.is_file():
            raise RuntimeError(f"LiteRT's benchmark tool failed on {path}: {done.stderr.strip()[-500:]}")
        report = json.loads(result.read_text())
    return {"fully_accelerated": bool(report["fully_accelerated"]), "num_threads": num_threads, **report["latency"]}
