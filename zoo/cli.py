"""The `zoo` command: argument parsing, and the exit codes and messages of what `zoo.commands` raises."""

import argparse
import contextlib
import os
import pathlib
import re
import signal
import sys

from zoo import interrupts
from zoo.backends import BACKENDS, choose as choose_backend
from zoo.commands import (
    CommandFailed, cmd_bench, cmd_eval, cmd_export, cmd_info, cmd_list, cmd_predict, cmd_release, cmd_train, cmd_viz,
)
from zoo.console import QUIET_COMMANDS, import_keras_quietly, startup_noise_filtered
from zoo.files import DiskFull, disk_full


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1. Received: {text!r}")
    return value


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
    _add_model_arguments(p, "a .tflite file, a SavedModel folder, ")
    p.add_argument("--data-dir", help="image folders (the test/ split is evaluated)")
    p.add_argument("--source", help="tensorflow-datasets name when no --data-dir (default: the one the model was trained on, else cifar10)")
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
    p.add_argument("--source", help="tensorflow-datasets name when no --data-dir (default: the run's data.source)")
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
    import_keras_quietly()
    handlers = interrupts.install()  # SIGTERM (schedulers, `kill`) stops as Ctrl-C does
    try:
        return _run(args)
    finally:
        interrupts.restore(handlers)  # as they were (main() is also called in-process, by tests)


def _run(args):
    quiet = startup_noise_filtered if args.command in QUIET_COMMANDS else contextlib.nullcontext
    finished = False
    try:
        with quiet():
            args.func(args)
            finished = True
            interrupts.raise_pending()  # a stop swallowed on the way still ends the command as one
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
        where = ", but only after it had finished: what it wrote is complete" if finished else _resume_hint(args)
        print(f"\nzoo {args.command}: {what}{where}", file=sys.stderr)
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
