"""The `zoo` command: argument parsing and printing; the work happens in the modules it calls."""

import argparse
import contextlib
import fnmatch
import os
import pathlib
import re
import signal
import sys
import tempfile

import numpy as np

from zoo import interrupts
from zoo.backends import BACKENDS, choose as choose_backend
from zoo.files import DiskFull, check_output_folder, disk_full

# TensorFlow's start-up lines on a machine without a GPU (or without AVX flags compiled in).
# They are printed by C++ before Python's logging exists; any other line still reaches stderr.
_STARTUP_NOISE = (
    "All log messages before absl::InitializeLog",
    "cudart_stub.cc",
    "cpu_feature_guard.cc",
    "To enable the following instructions",
    "failed call to cuInit",
    "Unable to register cu",
    "computation_placer.cc",
    "oneDNN custom operations are on",
    # The TFLite converter and interpreter (export, predict, bench).
    "Created TensorFlow Lite XNNPACK delegate",
    "fully_quantize: ",
    "Estimated count of arithmetic ops",
)
_QUIET_COMMANDS = {"export", "release", "viz", "predict", "bench", "info"}  # short commands: their stderr is replayed when they end


@contextlib.contextmanager
def _startup_noise_filtered():
    """Capture file descriptor 2, then replay it without TensorFlow's known start-up lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if not any(noise in line for noise in _STARTUP_NOISE):
                    print(line, file=sys.stderr)


def _import_keras_quietly():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow turns its oneDNN CPU kernels on only for some CPUs; on the 2-core AMD EPYC this
    # project is developed on they train LeNet-5 2.7x faster. Set TF_ENABLE_ONEDNN_OPTS=0 to opt out.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    with _startup_noise_filtered():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()  # device discovery logs its own start-up lines
        else:  # Keras imports TensorFlow later where it is installed (e.g. to seed it): now, quietly
            with contextlib.suppress(ImportError):
                import tensorflow  # noqa: F401


def _format_count(n):
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _table(rows, header):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _released(info, details=False):
    """The model's released weights tags; where a release was built with other options than the
    defaults (e.g. lenet5's cifar10 has batch norm), its own parameter count (and options)."""
    from zoo import pretrained
    from zoo.models.base import options_of

    tags = []
    for tag in info.weights:
        card = pretrained.card(info.name, tag)
        if card["params"] == info.params:
            tags.append(tag)
            continue
        changed = []
        if details:
            default = options_of(info.builder())
            changed = [f"{k}={v}" for k, v in card["options"].items() if default.get(k) != v]
        tags.append(f"{tag} ({card['params']:,} params{', with ' + ', '.join(changed) if changed else ''})")
    return ", ".join(tags)


def cmd_list(args):
    from zoo.models import list_models, model_info

    if args.recipes:
        from zoo import recipe as recipes

        names = [n for n in recipes.available() if not args.include or any(fnmatch.fnmatch(n, p) for p in args.include)]
        print(_table([(n, recipes.load(n)["description"]) for n in names], ("recipe", "description")))
        return
    rows = []
    for name in list_models(args.include, args.exclude, pretrained=args.pretrained):
        info = model_info(name)
        rows.append((name, f"{info.params:,}", _format_count(info.macs), f"{info.min_input_size}x{info.min_input_size}", _released(info) or "-"))
    print(_table(rows, ("model", "params", "MACs", "min input", "weights")))


def cmd_info(args):
    from zoo.models.base import count_macs
    from zoo.models import model_info

    if args.model.endswith(".tflite"):
        from zoo import mobile

        print("\n".join(mobile.describe(args.model)))
        return
    info = model_info(args.model)
    model = info.builder()
    print(f"{info.name}: {info.reference}")
    print(f"params {model.count_params():,}  MACs {count_macs(model):,}  min input {info.min_input_size}x{info.min_input_size}")
    print(f"input {tuple(model.input.shape[1:])} uint8-range RGB (0-255), output {tuple(model.output.shape[1:])} logits")
    print(f"released weights: {_released(info, details=True) or 'none'} (zoo list --pretrained)\n")
    rows = [(layer.name, type(layer).__name__, str(tuple(layer.output.shape[1:])), f"{layer.count_params():,}") for layer in model.layers]
    print(_table(rows, ("layer", "type", "output shape", "params")))


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1. Received: {text!r}")
    return value


class CommandFailed(Exception):
    """A command that ran and failed for a reason its message says in full (exit code 1)."""


def cmd_train(args):
    from zoo import recipe as recipes
    from zoo.training import TrainingDiverged, train

    overrides = list(args.set)
    if args.data_dir:
        overrides.append(f"data.data_dir={recipes.toml_value(args.data_dir)}")
    if args.tfds_data_dir:
        overrides.append(f"data.tfds_data_dir={recipes.toml_value(args.tfds_data_dir)}")
    if args.epochs is not None:
        overrides.append(f"training.epochs={args.epochs}")
    recipe = recipes.load(args.recipe, overrides)
    out = args.run_dir = args.out or os.path.join("runs", recipe["name"])
    try:
        train(
            recipe, out, overwrite=args.overwrite, strategy=args.strategy, data_threads=args.data_threads,
            backup_every=args.backup_every, backend_choice={"requested": args.backend, "why": args.backend_why},
            augment_on=args.augment_on,
        )
    except TrainingDiverged as e:
        raise CommandFailed(e) from None


def _tta_words(args):
    views = ["flip"] * args.tta_flip + [f"{args.tta_shift}-pixel shifts"] * bool(args.tta_shift)
    return f", {' + '.join(views)} TTA" if views else ""


def cmd_eval(args):
    import json

    from zoo import pretrained
    from zoo.data import DataUnavailableError, Split, load_dataset, load_test_images
    from zoo.evaluation import check_classes, evaluate
    from zoo.loading import load_model, run_results, trained_with_flips

    model, model_class_names = load_model(args.model, weights=args.weights)
    height, width, channels = model.input.shape[1:]
    if args.data_dir:  # only the test images are decoded
        split = (run_results(args.model) or {}).get("data", {}).get("split")
        test, class_names, part = load_test_images(args.data_dir, (height, width), channels, split)
        source = os.path.abspath(args.data_dir)
        if args.limit:
            keep = np.random.default_rng(0).permutation(len(test))[: args.limit]
            test = Split(test.images[keep], test.labels[keep])
    else:
        try:
            dataset = load_dataset(
                args.source, tfds_data_dir=args.tfds_data_dir, image_size=(height, width), channels=channels,
                validation_size=0, limit=args.limit,
            )
        except DataUnavailableError as e:
            if not pretrained.is_tag(args.weights):
                raise
            card = pretrained.card(args.model, args.weights)
            raise DataUnavailableError(f"{e} The figures of {_model_title(args)} were measured on {card['data']['test']}.") from None
        test, class_names, source, part = dataset.test, dataset.class_names, dataset.source, "test"
    check_classes(model, class_names, model_class_names, source)
    if args.tta_flip and trained_with_flips(args.model, args.weights) is False:
        print(f"note: {_model_title(args)} was trained without mirrored images (augment.flip = false): --tta-flip "
              "averages in views it never saw (a mirrored digit is no digit)", file=sys.stderr, flush=True)
    result = evaluate(model, test, class_names, tta_flip=args.tta_flip, tta_shift=args.tta_shift or 0)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{_model_title(args)} on {source}, {part} ({result['images']} images{_tta_words(args)})")
    print(f"accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}\n")
    rows = [(name, f"{acc:.4f}") for name, acc in result["per_class_accuracy"].items()]
    print(_table(rows, ("class", "accuracy")))
    print("\nconfusion matrix (rows: true, columns: predicted)")
    print(_table([(n, *row) for n, row in zip(class_names, result["confusion_matrix"])], ("", *[n[:5] for n in class_names])))


def cmd_release(args):
    from zoo import pretrained
    from zoo.release import release, update_release

    if pathlib.Path(args.run, pretrained.CARD).is_file():  # a release: bring it up to today's
        card = update_release(
            args.run, data_dir=args.data_dir, tfds_data_dir=args.tfds_data_dir, source=args.source,
            tflite=not args.card_only, overwrite=args.overwrite,
        )
        verb = "updated the card of" if args.card_only else "re-exported the TFLite files of"
    else:
        if args.card_only:
            raise ValueError(f"--card-only updates a release folder (one with {pretrained.CARD}); {args.run} is not one.")
        card = release(
            args.run, data_dir=args.data_dir, tfds_data_dir=args.tfds_data_dir, source=args.source, tag=args.tag,
            out=args.out, quantize=_csv(args.quantize), data_description=args.data_description, overwrite=args.overwrite,
        )
        verb = "released"
    print(
        f"{verb} {card['model']}(weights={card['weights']!r}) -> {card['folder']}"
        f"\ntest top-1 {_pct(card['accuracy']['test_top1'])}"
        + (f" (flip TTA {_pct(card['accuracy']['test_top1_flip_tta'])})" if card["accuracy"]["test_top1_flip_tta"] is not None else "")
        + f", multi-view TTA {_pct(card['accuracy']['test_top1_multi_view_tta'])}, "
        f"int8 {_pct(card['int8']['test_top1'])}"
    )


def cmd_export(args):
    from zoo import export
    from zoo.loading import load_model

    formats = _csv(args.formats)
    quantize = _csv(args.quantize)
    check_output_folder(args.out, args.overwrite, "export")  # before the model loads
    model, class_names = load_model(args.model, weights=args.weights)
    calibration = verification = labels = None
    if args.calibration_data:
        from zoo.data import load_dataset
        from zoo.evaluation import check_classes

        height, width, channels = model.input.shape[1:]
        data = load_dataset(data_dir=args.calibration_data, image_size=(height, width), channels=channels, validation_size=0)
        check_classes(model, data.class_names, class_names, data.source)
        calibration = data.train.images[: args.calibration_images]
        verification, labels = data.test.images[: args.verify_images], data.test.labels[: args.verify_images]
        class_names = data.class_names
    record = export.export_model(
        model, args.out, formats=formats, quantize=quantize, calibration=calibration, verification=verification,
        verification_labels=labels, class_names=class_names, overwrite=args.overwrite, enforce_bounds=not args.no_verify,
    )
    rows = []
    for variant, entry in record["variants"].items():
        v = entry.get("verification", {})
        rows.append((entry["file"], f"{entry['bytes'] / 1e6:.2f} MB", _pct(v.get("agreement")), _pct(v.get("accuracy")), {True: "yes", False: "NO"}.get(v.get("passed"), "-")))
    if rows:
        print(_table(rows, ("file", "size", "agreement", "accuracy", "verified")))
    print(f"exported {record['model']} -> {args.out} (export.json, labels.txt{', saved_model/' if 'saved_model' in formats else ''})")


def cmd_viz(args):
    from zoo import viz
    from zoo.loading import load_model

    if args.image is None and not args.filters:
        raise ValueError("Nothing to draw: give --image IMAGE (filters, feature maps and Grad-CAM), or --filters.")
    model, class_names = load_model(args.model, weights=args.weights)
    image = viz.load_image(args.image, model) if args.image else None
    items = viz.report(
        model, args.out, image=image, image_name=os.path.basename(args.image) if args.image else "image",
        class_names=class_names, layer_names=_csv(args.layers) if args.layers else None, top_k=args.top_k,
        overwrite=args.overwrite,
    )
    for file, _ in items:
        print(os.path.join(args.out, file))
    print(f"open {os.path.join(args.out, 'index.html')}")


def cmd_predict(args):
    import json

    from zoo import export
    from zoo.data import image_files
    from zoo.loading import read_labels

    paths = image_files(args.images)
    if not paths:
        raise FileNotFoundError(f"No image files in {', '.join(args.images)}.")
    given = read_labels(args.labels) if args.labels else None
    classifier, names = export.load_classifier(args.model, weights=args.weights)
    images = export.load_images(paths, classifier.input_shape)
    probabilities = classifier.predict(images)
    if given is not None and len(given) != probabilities.shape[1]:
        raise ValueError(f"{args.labels} names {len(given)} classes, one per line, but the model has {probabilities.shape[1]} outputs.")
    labels = given or names or [str(i) for i in range(probabilities.shape[1])]
    top = min(args.top, probabilities.shape[1])
    report = [
        {"image": str(path), "top": [{"class": labels[i], "probability": float(p[i])} for i in np.argsort(-p)[:top]]}
        for path, p in zip(paths, probabilities)
    ]
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for item in report:
        print(item["image"])
        for rank, guess in enumerate(item["top"], start=1):
            print(f"  {rank}. {guess['class']:<16} {guess['probability']:.4f}")


def cmd_bench(args):
    import json

    from zoo import export

    folder = args.folder
    if not os.path.isfile(os.path.join(folder, "export.json")):
        raise FileNotFoundError(f"No export.json in {folder}: point zoo bench at a folder written by zoo export.")
    record = json.loads(pathlib.Path(folder, "export.json").read_text())
    if not record["variants"]:
        raise FileNotFoundError(f"The export in {folder} has no TFLite files to time (it was made with --formats saved_model).")
    first = next(iter(record["variants"].values()))
    shape = first["input"]["shape"][1:]
    if args.data_dir:
        from zoo.data import load_dataset

        images = load_dataset(data_dir=args.data_dir, image_size=tuple(shape[:2]), channels=shape[2], validation_size=0, limit=64).test.images
    else:
        images = np.random.default_rng(0).integers(0, 256, size=(64, *shape), dtype=np.uint8)
    result = export.benchmark(folder, images, num_threads=args.threads, runs=args.runs)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    delegated = {True: "yes", False: "NO", None: "-"}
    rows = [
        (r["variant"], f"{r['bytes'] / 1e6:.2f} MB", f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}", f"{r['images_per_second']:.0f}", delegated[r.get("fully_accelerated")])
        for r in result["results"]
    ]
    print(f"{result['model']}: single-image latency over {args.runs} runs, {args.threads} thread(s)")
    print(_table(rows, ("variant", "size", "median ms", "p90 ms", "images/s", "fully delegated (LiteRT CPU)")))


def _model_title(args):
    return f"{args.model}(weights={args.weights!r})" if args.weights else args.model


def _csv(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def _pct(value):
    return "-" if value is None else f"{value * 100:.2f}%"


def _add_model_arguments(parser, other_kinds=""):
    parser.add_argument("model", help=f"{other_kinds}a .keras file, a run folder, or a registered model name (with --weights)")
    parser.add_argument("--weights", help="for a model name: released weights (e.g. cifar10, see zoo list --pretrained) or a weights file")


def _as_cli_options(message):
    """The Python API's `weights=...` in an error message, as the command line spells it."""
    message = message.replace("Pass weights=None", "Pass --weights none")
    return re.sub(r"Received: weights=(['\"])(.*?)\1", r"Received: --weights \2", message)


def _version():
    import importlib.metadata

    try:
        return importlib.metadata.version("zoo")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown (not installed)"


TFDS_DATA_DIR_HELP = "where tensorflow-datasets keeps its downloads (default: its own, ~/tensorflow_datasets)"


def build_parser():
    parser = argparse.ArgumentParser(prog="zoo", description="A Keras 3 model zoo for image classification.")
    parser.add_argument("--version", action="version", version=f"zoo {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("list", help="list the registered models")
    p.add_argument("include", nargs="*", help="fnmatch patterns to keep, e.g. 'vgg*'")
    p.add_argument("--exclude", nargs="+", help="fnmatch patterns to drop")
    p.add_argument("--pretrained", action="store_true", help="only models with released weights")
    p.add_argument("--recipes", action="store_true", help="the shipped training recipes (names for zoo train) instead of models")
    p.set_defaults(func=cmd_list)

    p = commands.add_parser("info", help="parameters, MACs and the layer table of a model; or what a .tflite file carries")
    p.add_argument("model", help="a registered model name (see `zoo list`), or a .tflite file (its metadata, tensors and labels)")
    p.set_defaults(func=cmd_info)

    p = commands.add_parser("train", help="train a recipe into a run folder (re-run to resume)")
    p.add_argument("recipe", help="a shipped recipe name (see zoo list --recipes) or a path to a .toml recipe")
    p.add_argument("--data-dir", help="image folders DIR/train/<class>/*, DIR/test/<class>/* (or DIR/<class>/*), or a folder of MNIST-style idx files, instead of tensorflow-datasets")
    p.add_argument("--tfds-data-dir", help=TFDS_DATA_DIR_HELP)
    p.add_argument("--epochs", type=_positive_int, help="override training.epochs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any recipe key, e.g. optimizer.learning_rate=0.05")
    p.add_argument("--out", help="run folder (default: runs/<recipe>)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished or different run in --out")
    p.add_argument("--strategy", choices=("mirrored", "multi_worker"), help="train on all local GPUs, or on the workers of TF_CONFIG")
    p.add_argument(
        "--backend", default="auto", choices=("auto", *BACKENDS),
        help="the Keras backend (default auto: KERAS_BACKEND if set, else JAX with an NVIDIA GPU, else TensorFlow); results.json records it",
    )
    p.add_argument("--data-threads", type=_positive_int, default=1, help="threads preparing batches ahead (results do not depend on it; default: 1)")
    p.add_argument(
        "--augment-on", default="auto", choices=("auto", "host", "device"),
        help="where batches are augmented: the host (NumPy) or the device, which holds the training set "
        "(default auto: the device with a GPU under JAX or torch); the images are the same either way",
    )
    p.add_argument(
        "--backup-every", type=_positive_int, default=1, metavar="N",
        help="write the backup and the best checkpoint every N epochs: fewer writes for epochs of seconds, "
        "but a kill loses up to N-1 epochs (default: 1)",
    )
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("eval", help="accuracy, loss, per-class accuracy and confusion matrix of a model")
    _add_model_arguments(p)
    p.add_argument("--data-dir", help="image folders (the test/ split is evaluated)")
    p.add_argument("--source", default="cifar10", help="tensorflow-datasets name when no --data-dir (default: cifar10)")
    p.add_argument("--tfds-data-dir", help=TFDS_DATA_DIR_HELP)
    p.add_argument("--limit", type=_positive_int, help="evaluate only this many test images")
    p.add_argument("--tta-flip", action="store_true", help="average with the mirrored images")
    p.add_argument(
        "--tta-shift", type=_positive_int, metavar="PIXELS",
        help="also average each view shifted by PIXELS up-left and down-right (multi-view TTA; 1 is the fast-CIFAR choice)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_eval)

    p = commands.add_parser("export", help="SavedModel + TFLite variants, each verified against the Keras model")
    _add_model_arguments(p)
    p.add_argument("--out", required=True, help="output folder, e.g. saved_models/lenet5_cifar10")
    p.add_argument("--formats", default="saved_model,tflite", help="comma-separated: saved_model, tflite, web (a page classifying images in the browser)")
    p.add_argument("--quantize", default="float32,float16,dynamic,int8", help="comma-separated TFLite variants")
    p.add_argument("--calibration-data", help="image folders: train/ calibrates int8, test/ verifies every variant")
    p.add_argument("--calibration-images", type=_positive_int, default=300, help="training images that calibrate int8 (default: 300)")
    p.add_argument("--verify-images", type=_positive_int, default=1000, help="test images each variant is checked on against the Keras model (default: 1000)")
    p.add_argument("--no-verify", action="store_true", help="write the export even if a variant misses its bounds (figures are still recorded)")
    p.add_argument("--overwrite", action="store_true", help="replace --out (kept if the export fails)")
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("release", help="release a finished run into saved_models/ with a model card")
    p.add_argument("run", help="a finished run folder, e.g. runs/vgg16_bn_cifar10; or a release folder, to measure what its card lacks and re-export its TFLite files (with --overwrite)")
    p.add_argument("--data-dir", help="image folders: train/ calibrates int8, test/ is evaluated")
    p.add_argument("--source", default="cifar10", help="tensorflow-datasets name when no --data-dir")
    p.add_argument("--tfds-data-dir", help=TFDS_DATA_DIR_HELP)
    p.add_argument("--tag", default="cifar10", help="the weights tag users pass as weights=TAG (default: cifar10)")
    p.add_argument("--out", help="release folder (default: saved_models/<model>_<tag>)")
    p.add_argument("--quantize", default="int8", help="comma-separated TFLite variants to ship (default: int8)")
    p.add_argument("--data-description", help="how the card names the test data, e.g. 'CIFAR-10 test, local 5k half'")
    p.add_argument("--overwrite", action="store_true", help="replace the release folder (kept if the release fails)")
    p.add_argument("--card-only", action="store_true", help="with a release folder: measure what its card lacks, keep its TFLite files")
    p.set_defaults(func=cmd_release)

    p = commands.add_parser("viz", help="pictures of filters, feature maps and Grad-CAM, with an HTML page")
    _add_model_arguments(p)
    p.add_argument("--image", help="an image file: adds feature maps per block and Grad-CAM")
    p.add_argument("--filters", action="store_true", help="draw the first convolution's filters (always on with --image)")
    p.add_argument("--layers", help="comma-separated layer names to show instead of the conv-pool blocks")
    p.add_argument("--top-k", type=_positive_int, default=3, help="Grad-CAM for this many most probable classes")
    p.add_argument("--out", required=True, help="output folder (index.html + PNGs)")
    p.add_argument("--overwrite", action="store_true", help="replace --out")
    p.set_defaults(func=cmd_viz)

    p = commands.add_parser("predict", help="top-k classes of images with a TFLite, SavedModel or Keras model")
    _add_model_arguments(p, "a .tflite file, a SavedModel folder, ")
    p.add_argument("images", nargs="+", help="image files or folders of them (any common format; resized to the model input)")
    p.add_argument("--top", type=_positive_int, default=5, help="how many of the most probable classes to show per image (default: 5)")
    p.add_argument("--labels", help="class names, one per line (default: labels.txt beside the model)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_predict)

    p = commands.add_parser("bench", help="size and single-image latency of every TFLite variant of an export")
    p.add_argument("folder", help="a folder written by zoo export")
    p.add_argument("--threads", type=_positive_int, default=1, help="interpreter num_threads")
    p.add_argument("--runs", type=_positive_int, default=100, help="timed invokes per variant (after 10 warm-up ones)")
    p.add_argument("--data-dir", help="time on these test images instead of random pixels")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_bench)
    return parser


def _resume_hint(args):
    """For `zoo train`: from which epoch the same command resumes (its last backup), or that it starts afresh."""
    if args.command != "train" or not getattr(args, "run_dir", None):
        return ""
    import json

    metadata = pathlib.Path(args.run_dir, "backup", "training_metadata.json")
    try:
        epoch = json.loads(metadata.read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return f": {args.run_dir} holds no backup yet, so the same command starts afresh"
    return f": run the same command again to resume from its backup after epoch {epoch} (in {args.run_dir})"


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "include", None) == []:
        args.include = None
    if getattr(args, "backend", None):  # before Keras is imported: it reads KERAS_BACKEND once
        try:
            _, args.backend_why = choose_backend(args.backend)
        except ValueError as e:
            print(f"zoo {args.command}: error: {e}", file=sys.stderr)
            return 2
    _import_keras_quietly()
    handlers = interrupts.install()  # SIGTERM (schedulers, `kill`) stops as Ctrl-C does
    try:
        return _run(args)
    finally:
        interrupts.restore(handlers)  # as they were (main() is also called in-process, by tests)


def _run(args):
    quiet = _startup_noise_filtered if args.command in _QUIET_COMMANDS else contextlib.nullcontext
    try:
        with quiet():
            args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is caught below rather than at exit
    except DiskFull as e:  # nothing the user had is lost: the writes are atomic
        print(f"zoo {args.command}: error: {e.strerror}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # bad input: say what, no traceback
        print(f"zoo {args.command}: error: {_as_cli_options(str(e))}", file=sys.stderr)
        return 2
    except CommandFailed as e:
        print(f"zoo {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: a message, not a traceback through Keras
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C stops at once
        interrupts.stopped()
        terminated = isinstance(e, interrupts.Terminated)
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        print(f"\nzoo {args.command}: {what}{_resume_hint(args)}", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:  # the reader stopped early (`zoo info vgg16 | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 1
    except OSError as e:  # after BrokenPipeError (an OSError too): a full disk met outside zoo's own writes (Keras' backup): the same line
        full = disk_full(e, e.filename or (os.path.join(args.run_dir, "backup") if getattr(args, "run_dir", None) else "the output"))
        if full is None:
            raise
        print(f"zoo {args.command}: error: {full.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
