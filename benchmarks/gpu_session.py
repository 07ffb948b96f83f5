"""One command for a short GPU lease: train zoo recipes under JAX beside the same-data PyTorch reference,
measure both training steps, and bring the run folders back. In three steps:

    python benchmarks/gpu_session.py pack --data-dir ../shared/data/cifar10    # here: .devdata/ (data + wheels)
    # on the GPU machine, with .devdata carried (the repository's tree travels with it):
    python3 benchmarks/gpu_session.py run --out $OUT --minutes 8 --epochs 200 \\
        --recipes vgg16_bn_cifar10 vgg11_bn_cifar10 --references vgg16_bn vgg11_bn --speed
    python benchmarks/gpu_session.py unpack FOLDER_WITH_THE_FILES --into runs/gpu   # here: run folders
    zoo release runs/gpu/vgg16_bn_cifar10 --data-dir ../shared/data/cifar10 --overwrite

`pack` stores the image folder's JPEG files as they are (one .npz of their bytes: the GPU machine
decodes the same bytes the same way, so the split and pixels are this machine's) and the wheels the
GPU machine lacks (Keras and two of its dependencies; it has JAX, PyTorch, NumPy, h5py, Pillow).
`run` installs them, writes the images back into a folder, optionally measures the training step of
zoo (JAX) and native PyTorch with `train_speed.py`, then trains every recipe (`zoo train --backend jax`,
augmentation on the device, backups every 10 epochs) and every reference (`torch_reference.py`) at
once on the one GPU, stops whatever is still running at the deadline, and leaves in `--out` a tar
of the run folders split into parts that fit the lease's file limits, with the weights in float16
(as releases keep them). `unpack` joins the parts and rebuilds each run's `model.keras` (float32
variables) so that `zoo eval` and `zoo release` take the folder as if it had been trained here.
"""

import argparse
import glob
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import tarfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
PACK = ROOT / ".devdata"
DATA_FILE = "images.npz"
PART_BYTES = 15 * 2**20  # files that come back from a lease: at most 16 MiB each, 8 in all
MOVED_LIMIT = 64 * 2**20  # what travels to the lease: the tree and the carried paths
# What the GPU machine lacks for `zoo train` (its image has jax, numpy, h5py, ml-dtypes, rich, absl-py, pillow).
WHEELS = ("keras", "namex", "optree")
KEPT = ("recipe.toml", "results.json", "history.csv", "state.json", "*.png", "*.log")


def pack(data_dir, dest=PACK, wheels=True, python_version="3.12"):
    """Write `dest/images.npz` (every image file's bytes under data_dir) and `dest/wheels/`."""
    import numpy as np

    data_dir, dest = pathlib.Path(data_dir), pathlib.Path(dest)
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not any(p.relative_to(data_dir).parts[0] == "train" for p in files):
        raise SystemExit(f"No train/ folder of images in {data_dir} (expected DIR/train/<class>/*, DIR/test/<class>/*).")
    blobs = [p.read_bytes() for p in files]
    dest.mkdir(parents=True, exist_ok=True)
    np.savez(
        dest / DATA_FILE, paths=np.array([str(p.relative_to(data_dir)) for p in files]),
        offsets=np.cumsum([0] + [len(b) for b in blobs]), blob=np.frombuffer(b"".join(blobs), np.uint8),
    )
    if wheels:
        import importlib.metadata

        wanted = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
             "--implementation", "cp", *[f"--platform=manylinux_2_{n}_x86_64" for n in (17, 27, 28)], "--platform=manylinux2014_x86_64",
             "-d", str(dest / "wheels"), *wanted],
            check=True,
        )
    moved = _travelling_bytes(dest)
    print(f"{dest}: {len(files):,} image files ({(dest / DATA_FILE).stat().st_size / 2**20:.1f} MiB)"
          f"{', wheels: ' + ', '.join(sorted(os.listdir(dest / 'wheels'))) if wheels else ''}")
    print(f"What travels to the lease (the repository's tree and {dest.name}/): {moved / 2**20:.1f} MiB of at most {MOVED_LIMIT / 2**20:.0f}")
    if moved > MOVED_LIMIT:
        print(f"  Over the limit: the lease refuses the call. The tracked releases (saved_models/, {_bytes(ROOT / 'saved_models') / 2**20:.0f} MiB) "
              "are the bulk; move them out of the tree for the call and back after it.")


def _bytes(path):
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())


def _travelling_bytes(dest):
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, text=True)
    tree = sum((ROOT / f).stat().st_size for f in listed.stdout.split("\0") if f and (ROOT / f).is_file())
    return tree + _bytes(dest)


def unpack_images(pack_file, folder):
    """The packed image files written back under `folder` (the same relative paths, the same bytes)."""
    import numpy as np

    packed = np.load(pack_file)
    blob, offsets = packed["blob"], packed["offsets"]
    for i, relative in enumerate(packed["paths"]):
        path = pathlib.Path(folder) / str(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob[offsets[i] : offsets[i + 1]].tobytes())
    return len(packed["paths"])


def install_wheels(wheels, target="/tmp/zoo-site"):
    """Install the carried wheels into `target` where the interpreter lacks them; the PYTHONPATH entry to use."""
    found = sorted(glob.glob(str(pathlib.Path(wheels) / "*.whl")))
    if not found:
        return None
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade", "--target", target, *found], check=True)
    return target


def run(args):
    """On the GPU machine: train, measure, and put the run folders into `args.out`."""
    if not (pathlib.Path(args.pack) / DATA_FILE).is_file():
        raise SystemExit(f"No {DATA_FILE} in {args.pack}: run `gpu_session.py pack` here first and carry the folder to the machine.")
    started = time.time()
    deadline = started + args.minutes * 60
    work = pathlib.Path(args.work)
    runs = work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    site = install_wheels(pathlib.Path(args.pack) / "wheels")
    env = {
        **os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [site, str(ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # several trainings share the GPU: JAX would take 75% of it at once
    }
    data_dir = work / "data"
    count = unpack_images(pathlib.Path(args.pack) / DATA_FILE, data_dir)
    print(f"{count:,} image files in {data_dir} ({time.time() - started:.0f} s)", flush=True)
    summary = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)), "epochs": args.epochs, "minutes": args.minutes}
    if args.speed:
        speed = runs / "speed.json"
        command = [sys.executable, str(HERE / "train_speed.py"), "--models", *args.speed_models, "--backends", "jax", "--batch", str(args.speed_batch),
                   "--steps", str(args.speed_steps), "--repeats", str(args.speed_repeats), "--compile", "--json", str(speed)]
        with open(runs / "speed.log", "w") as log:
            try:  # at most a third of the lease: the trainings come after it
                done = subprocess.run(command, env={**env, "KERAS_BACKEND": "jax"}, stdout=log, stderr=subprocess.STDOUT, timeout=args.minutes * 20)
                summary["speed"] = "speed.json" if done.returncode == 0 else f"failed ({done.returncode}): see speed.log"
            except subprocess.TimeoutExpired:
                summary["speed"] = "stopped after a third of --minutes: see speed.log"
        print(f"speed: {summary['speed']} ({time.time() - started:.0f} s)", flush=True)
    jobs = {}
    for recipe in args.recipes:
        command = [sys.executable, "-m", "zoo.cli", "train", recipe, "--data-dir", str(data_dir), "--backend", "jax", "--epochs", str(args.epochs),
                   "--out", str(runs / recipe), "--backup-every", str(args.backup_every), "--augment-on", args.augment_on,
                   *[part for item in args.set for part in ("--set", item)]]
        jobs[recipe] = command
    for model in args.references:
        command = [sys.executable, str(HERE / "torch_reference.py"), "--model", model, "--data-dir", str(data_dir), "--epochs", str(args.epochs),
                   "--json", str(runs / f"reference_{model}.json"), *(["--compile"] if args.compile else []),
                   *[part for item in args.set for part in ("--set", item)]]
        jobs[f"reference_{model}"] = command
    processes = {}
    for name, command in jobs.items():
        log = open(runs / f"{name}.log", "w")
        processes[name] = (subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True), log)
    print(f"started {', '.join(processes)}", flush=True)
    while any(p.poll() is None for p, _ in processes.values()) and time.time() < deadline:
        time.sleep(5)
    summary["jobs"] = {}
    for name, (process, log) in processes.items():
        if process.poll() is None:  # the deadline: the run keeps its last backup and best checkpoint
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            summary["jobs"][name] = f"stopped at the deadline after {_epochs_done(runs / f'{name}.log')} epochs"
        else:
            summary["jobs"][name] = "finished" if process.returncode == 0 else f"failed ({process.returncode}): see {name}.log"
        log.close()
    summary["seconds"] = round(time.time() - started)
    (runs / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2), flush=True)
    _bring_back(runs, pathlib.Path(args.out), env)


def _epochs_done(log):
    """The last `epoch N/M` line's N in a training log (zoo train and torch_reference print one per epoch)."""
    import re

    done = re.findall(r"^epoch (\d+)/\d+", log.read_text(errors="replace"), re.MULTILINE)
    return int(done[-1]) if done else 0


def _bring_back(runs, out, env):
    """A tar of the kept files of every run (model.keras as float16 weights), in parts of at most 15 MiB."""
    convert = (
        "import sys, keras; from zoo.files import save_float16_weights\n"
        "for path in sys.argv[1:]:\n"
        "    save_float16_weights(keras.saving.load_model(path, compile=False), path[: -len('model.keras')] + 'model.weights.h5')\n"
    )
    models = sorted(str(p) for p in runs.glob("*/model.keras"))
    if models:
        subprocess.run([sys.executable, "-c", convert, *models], env={**env, "KERAS_BACKEND": "jax"}, check=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(runs.rglob("*")):
            relative = path.relative_to(runs)
            if relative.name.startswith("."):  # a run's lock
                continue
            if path.is_file() and (len(relative.parts) == 1 or any(path.match(p) for p in (*KEPT, "model.weights.h5"))) and "backup" not in relative.parts:
                tar.add(path, arcname=str(relative))
    out.mkdir(parents=True, exist_ok=True)
    data = buffer.getvalue()
    for i in range(0, max(len(data), 1), PART_BYTES):
        (out / f"runs.tar.{i // PART_BYTES:03d}").write_bytes(data[i : i + PART_BYTES])
    print(f"{len(data) / 2**20:.1f} MiB in {-(-len(data) // PART_BYTES)} part(s) in {out}", flush=True)


def unpack(folder, into):
    """Join the parts, extract the run folders into `into`, and give each zoo run its float32 model.keras back."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parts = sorted(pathlib.Path(folder).glob("runs.tar.[0-9][0-9][0-9]"))
    if not parts:
        raise SystemExit(f"No runs.tar.NNN parts in {folder}: point at the folder the lease's files came back to.")
    into = pathlib.Path(into)
    if into.exists() and any(into.iterdir()):
        raise SystemExit(f"{into} is not empty: unpack into a new folder (nothing there is replaced).")
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts))) as tar:
        tar.extractall(into, filter="data")
    from zoo import recipe as recipes
    from zoo.training import build_model

    for weights in sorted(into.glob("*/model.weights.h5")):
        run_dir = weights.parent
        recipe = recipes.load(str(run_dir / "recipe.toml"))
        results = run_dir / "results.json"  # a run stopped at the deadline has none
        classes = len(json.loads(results.read_text())["test_per_class_accuracy"]) if results.exists() else recipe["model"]["num_classes"] or 10
        model = build_model(recipe, (*recipe["data"]["image_size"], 3), classes)
        model.load_weights(weights)
        model.save(run_dir / "model.keras")
        print(f"{run_dir}: model.keras from its float16 weights ({model.count_params():,} params)")
    summary = into / "summary.json"
    if summary.exists():
        print(summary.read_text())
    for reference in sorted(into.glob("reference_*.json")):
        r = json.loads(reference.read_text())
        print(f"{reference.name}: {r['model']} test {r['test_accuracy']:.4f} ({r['test_accuracy_flip_tta']:.4f} flip TTA), "
              f"{r['images_per_second'] or 0:.0f} images/s, {r['recipe']['epochs']} epochs on {r['device']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="here: the data and wheels for the lease, in .devdata/")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--dest", default=str(PACK))
    p.add_argument("--no-wheels", action="store_true", help="leave out the wheels (for a machine that has Keras)")
    p = commands.add_parser("run", help="on the GPU machine: train, measure, write the results into --out")
    p.add_argument("--out", required=True, help="where the parts go ($OUT on the lease)")
    p.add_argument("--pack", default=str(PACK))
    p.add_argument("--work", default="/tmp/zoo-gpu", help="data and run folders while it runs")
    p.add_argument("--minutes", type=float, default=8, help="stop everything still running this long after the start (default: 8; packing takes under a minute more)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--recipes", nargs="*", default=["vgg16_bn_cifar10", "vgg11_bn_cifar10"])
    p.add_argument("--references", nargs="*", default=["vgg16_bn", "vgg11_bn"], help="models trained by torch_reference.py")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides for every run (the references use the data.* keys)")
    p.add_argument("--limit", type=int, help="only this many images (a quick check of the whole path)")
    p.add_argument("--backup-every", type=int, default=10)
    p.add_argument("--augment-on", default="auto", choices=("auto", "host", "device"))
    p.add_argument("--compile", action="store_true", help="torch.compile the references")
    p.add_argument("--speed", action="store_true", help="first measure the training step with train_speed.py (6 processes per model and repeat, ~25 s each)")
    p.add_argument("--speed-models", nargs="*", default=["vgg16_bn"])
    p.add_argument("--speed-repeats", type=int, default=1)
    p.add_argument("--speed-batch", type=int, default=256)
    p.add_argument("--speed-steps", type=int, default=100)
    p = commands.add_parser("unpack", help="here: the returned parts -> run folders")
    p.add_argument("folder")
    p.add_argument("--into", required=True)
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.data_dir, args.dest, wheels=not args.no_wheels)
    elif args.command == "run":
        if args.limit:
            args.set.append(f"data.limit={args.limit}")
        run(args)
    else:
        unpack(args.folder, args.into)


if __name__ == "__main__":
    main()
