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
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
PACK = ROOT / ".devdata"
DATA_FILE = "images.npz"
PART_BYTES = 15 * 2**20  # files that come back from a lease: at most 16 MiB each, 8 in all
MOVED_LIMIT = 64 * 2**20  # what travels to the lease: the tree and the carried paths
# What the GPU machine lacks for `zoo train` (its image has jax, numpy, h5py, ml-dtypes, rich, absl-py, pillow).
WHEELS = ("keras", "namex", "optree")
PROBE_EPOCHS = 1000
REFERENCE_BATCH = 256  # torch_reference.py's default, the peers' batch
KEPT = ("recipe.toml", "labels.txt", "results.json", "history.csv", "state.json", "*.png", "*.log")


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


def check_wheels(wheels):
    """One line, before any work, if a packed wheel cannot install on this interpreter (e.g. cp312 on 3.11)."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    supported = set(sys_tags())
    misfits = [p.name for p in sorted(pathlib.Path(wheels).glob("*.whl")) if not parse_wheel_filename(p.name)[3] & supported]
    if misfits:
        here = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise SystemExit(
            f"The packed wheels do not fit this Python {here} ({sys.executable}): {', '.join(misfits)}. "
            f"Pack again for it: gpu_session.py pack --python-version {here} ..."
        )


def install_wheels(wheels, target="/tmp/zoo-site"):
    """Install the carried wheels into `target` where the interpreter lacks them; the PYTHONPATH entry to use."""
    found = sorted(glob.glob(str(pathlib.Path(wheels) / "*.whl")))
    if not found:
        return None
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade", "--target", target, *found], check=True)
    return target


class Job:
    """One training process (its own process group, output in a log file); a thread notes the wall-clock time at
    which each of its `epoch N/M` lines appears, whatever the caller is doing meanwhile."""

    def __init__(self, name, command, log_path, env, interval=0.2):
        self.name, self.command, self.log_path = name, command, pathlib.Path(log_path)
        self.log = open(self.log_path, "w")
        self.started = time.time()
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        self.epoch_ends, self.ended = [], None
        self._watcher = threading.Thread(target=self._watch, args=(interval,), daemon=True)
        self._watcher.start()

    def _watch(self, interval):
        while True:
            running = self.process.poll() is None
            for _ in range(_epochs_done(self.log_path) - len(self.epoch_ends)):
                self.epoch_ends.append(time.time())
            if not running:
                self.ended = time.time()
                return
            time.sleep(interval)

    @property
    def running(self):
        return self.ended is None

    def stop(self, grace=30):
        """SIGTERM to its process group (a run keeps its last backup and best checkpoint), SIGKILL after `grace` s;
        at once with grace=0."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM if grace else signal.SIGKILL)
            try:
                self.process.wait(grace or None)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._watcher.join()
        self.log.close()

    def tail(self, lines=12):
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _wait(jobs, deadline, until=lambda: False, interval=0.2):
    """Until every job has ended, `until()` holds, or the deadline passes."""
    while any(job.running for job in jobs) and time.time() < deadline and not until():
        time.sleep(interval)


def job_commands(args, data_dir, out_dir, epochs, overrides=()):
    """name -> command line of every zoo recipe (JAX) and PyTorch reference, in the order given."""
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = [*args.set, *overrides]
    sets = [part for item in overrides for part in ("--set", item)]
    commands = {}
    for recipe in args.recipes:
        commands[recipe] = [
            sys.executable, "-m", "zoo.cli", "train", recipe, "--data-dir", str(data_dir), "--backend", "jax", "--epochs", str(epochs[recipe]),
            "--out", str(out_dir / recipe), "--backup-every", str(args.backup_every), "--augment-on", args.augment_on, *sets,
        ]
    for model in args.references:
        name = f"reference_{model}"
        commands[name] = [
            sys.executable, str(HERE / "torch_reference.py"), "--model", model, "--data-dir", str(data_dir), "--epochs", str(epochs[name]),
            "--json", str(out_dir / f"{name}.json"), *(["--compile"] if args.compile else []), *sets,
        ]
    return commands


def pairs(recipes, references):
    """[(label, [job names])] in order of value: each recipe with the reference of its model, then unpaired references."""
    groups, paired = [], set()
    for recipe in recipes:
        model = recipe.removesuffix("_cifar10")
        names = [recipe] + ([f"reference_{model}"] if model in references else [])
        paired.update(names)
        groups.append((model, names))
    groups += [(m, [f"reference_{m}"]) for m in references if f"reference_{m}" not in paired]
    return groups


def plan_epochs(groups, epoch_seconds, startup_seconds, seconds_left, *, most, least, finish=30.0, safety=1.15):
    """Epochs for each group (equal within a group) so that every run ends before `seconds_left`, measured with all
    jobs running together; groups that cannot reach `least` epochs are left out (with the reason) rather than
    shortening the others. Returns ({job name: epochs}, {group label: reason left out})."""
    epochs, left_out = {}, {}
    for label, names in groups:
        missing = [n for n in names if n not in epoch_seconds]
        if missing:
            left_out[label] = f"no epoch time measured for {', '.join(missing)}"
            continue
        fits = min(int((seconds_left - startup_seconds[n] - finish) / (epoch_seconds[n] * safety)) for n in names)
        if fits < least:
            left_out[label] = f"{max(fits, 0)} epochs fit before the deadline, fewer than --min-epochs {least}"
            continue
        epochs.update({n: min(fits, most) for n in names})
    return epochs, left_out


def smoke_and_probe(args, env, data_dir, runs, work, steady=3):
    """The smoke pass (every job for one epoch on a few hundred images, in the real environment), then, if it
    passed, the probe (every job on the full data until each has `steady` epochs with all of them past their
    first, for the seconds per epoch of all running together and the start-up before the first)."""
    started = time.time()
    groups = pairs(args.recipes, args.references)
    names = [n for _, group in groups for n in group]
    smoke_jobs, reports = [], {}
    if args.smoke_images:
        overrides = [f"data.limit={args.smoke_images}", f"data.validation_size={max(args.smoke_images // 4, 1)}"]
        commands = job_commands(args, data_dir, work / "smoke", dict.fromkeys(names, 1), overrides)
        smoke_jobs = [Job(name, command, runs / f"smoke_{name}.log", env) for name, command in commands.items()]
    if smoke_jobs:
        _wait(smoke_jobs, started + args.smoke_seconds)
        failed = {}
        for job in smoke_jobs:
            overran = job.running
            job.stop(grace=0)
            if overran:
                failed[job.name] = f"still running after {args.smoke_seconds:.0f} s"
            elif job.process.returncode != 0:
                failed[job.name] = f"exit {job.process.returncode}"
        models = sorted(str(p) for p in (work / "smoke").glob("*/model.keras"))
        if not failed and models:  # the way back: float16 weights of a trained model
            done = _float16_weights(models, env)
            if done.returncode != 0:
                failed["float16 weights"] = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        finish = {job.name: round(job.ended - job.epoch_ends[-1], 1) for job in smoke_jobs if job.epoch_ends and job.ended}
        reports["smoke"] = {"seconds": round(time.time() - started, 1), "images": args.smoke_images, "failed": failed, "finish_seconds": finish}
        print(f"smoke pass ({args.smoke_images} images, 1 epoch, {len(smoke_jobs)} jobs at once): "
              f"{'all passed' if not failed else 'FAILED: ' + ', '.join(f'{k} ({v})' for k, v in failed.items())} in {reports['smoke']['seconds']:.0f} s", flush=True)
        for job in smoke_jobs:
            if job.name in failed:
                print(f"--- {job.name} ({job.log_path.name}):\n{job.tail()}", flush=True)
        if failed:
            return reports
    if args.epochs != "auto":
        return reports
    # After the smoke pass, not beside it: on the H200 eight processes compiling under JAX at once took minutes
    # (a VGG16-BN probe saw no epoch in 181 s; alone it starts in under 46 s), and the start-ups measured then
    # were four times the real ones.
    started = time.time()
    commands = job_commands(args, data_dir, work / "probe", dict.fromkeys(names, PROBE_EPOCHS))  # stopped long before
    probe_jobs = [Job(name, command, runs / f"probe_{name}.log", env) for name, command in commands.items()]

    def all_running_since():
        return max(job.epoch_ends[0] for job in probe_jobs) if all(job.epoch_ends for job in probe_jobs) else None

    def measured():
        since = all_running_since()
        return since is not None and all(sum(t > since for t in job.epoch_ends) >= steady for job in probe_jobs)

    _wait(probe_jobs, started + args.probe_seconds, until=measured)
    since = all_running_since()
    epoch_seconds, startup_seconds = {}, {}
    for job in probe_jobs:
        job.stop(grace=0)
        ends = [t for t in job.epoch_ends if since is None or t >= since]
        if len(ends) < 2:  # not enough while all ran (the probe's time ran out): its own epochs after its first
            ends = job.epoch_ends
        if len(ends) >= 2:  # (last - first) / epochs between them
            epoch_seconds[job.name] = round((ends[-1] - ends[0]) / (len(ends) - 1), 3)
            startup_seconds[job.name] = round(max(job.epoch_ends[0] - job.started - epoch_seconds[job.name], 0.0), 1)
    reports["probe"] = {"seconds": round(time.time() - started, 1), "epoch_seconds": epoch_seconds, "startup_seconds": startup_seconds,
                        "epochs_seen": {job.name: len(job.epoch_ends) for job in probe_jobs}}
    print(f"probe ({len(probe_jobs)} jobs at once, full data, {reports['probe']['seconds']:.0f} s): seconds per epoch "
          + ", ".join(f"{n} {s:.2f}" for n, s in epoch_seconds.items()) + "; start-up " + ", ".join(f"{n} {s:.0f} s" for n, s in startup_seconds.items()), flush=True)
    return reports


def speed(args, env, runs, deadline):
    """train_speed.py in what is left before the deadline (each configuration's result kept as it comes)."""
    seconds = deadline - time.time()
    if seconds < 30:
        return f"left out: {seconds:.0f} s left before the deadline"
    command = [sys.executable, str(HERE / "train_speed.py"), "--models", *args.speed_models, "--backends", "jax", "--batch", str(args.speed_batch),
               "--steps", str(args.speed_steps), "--repeats", str(args.speed_repeats), "--compile", "--json", str(runs / "speed.json"),
               *(["--only", *args.speed_only] if args.speed_only else [])]
    job = Job("speed", command, runs / "speed.log", {**env, "KERAS_BACKEND": "jax"})
    _wait([job], deadline)
    job.stop(grace=5)
    return "speed.json" if job.process.returncode == 0 else f"stopped or failed ({job.process.returncode}): see speed.log"


def run(args):
    """On the GPU machine: smoke pass, measured schedule, training, step speed; the run folders into `args.out`."""
    pack_dir = pathlib.Path(args.pack)
    if not (pack_dir / DATA_FILE).is_file():
        raise SystemExit(f"No {DATA_FILE} in {pack_dir}: run `gpu_session.py pack` here first and carry the folder to the machine.")
    check_wheels(pack_dir / "wheels")
    unknown = [r for r in args.recipes if not (ROOT / "recipes" / f"{r}.toml").is_file()]
    if unknown:
        raise SystemExit(f"Unknown recipe(s) {', '.join(unknown)}: shipped ones are {', '.join(sorted(p.stem for p in (ROOT / 'recipes').glob('*.toml')))}.")
    if args.references and 0 < args.smoke_images < REFERENCE_BATCH:
        raise SystemExit(f"--smoke-images {args.smoke_images}: the references train in batches of {REFERENCE_BATCH}; give at least that many, or 0 for no smoke pass.")
    started = time.time()
    deadline = started + args.minutes * 60
    # A call of its own under --work: a machine kept warm between calls still holds the last call's runs.
    work = pathlib.Path(args.work) / time.strftime("call-%Y%m%d-%H%M%S", time.gmtime(started))
    runs = work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    site = install_wheels(pack_dir / "wheels")
    env = {
        **os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [site, str(ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # several trainings share the GPU: JAX would take 75% of it at once
    }
    data_dir = pathlib.Path(args.work) / "data"
    count = unpack_images(pack_dir / DATA_FILE, data_dir)
    print(f"{count:,} image files in {data_dir} ({time.time() - started:.0f} s)", flush=True)
    summary = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)), "minutes": args.minutes, "jobs": {}}

    def finish(code=0):
        summary["seconds"] = round(time.time() - started)
        (runs / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2), flush=True)
        _bring_back(runs, pathlib.Path(args.out), env)
        if code:
            raise SystemExit(code)

    groups = pairs(args.recipes, args.references)
    summary.update(smoke_and_probe(args, env, data_dir, runs, work))
    if summary.get("smoke", {}).get("failed"):
        print("Stopped after the smoke pass: nothing was trained. Fix what failed (logs above and in smoke_*.log).", flush=True)
        return finish(1)
    if args.epochs == "auto":
        measured = summary["probe"]
        speed_reserve = args.speed_seconds if args.speed else 0
        finish_seconds = max([30.0, *(1.5 * s for s in summary.get("smoke", {}).get("finish_seconds", {}).values())])
        epochs, left_out = plan_epochs(
            groups, measured["epoch_seconds"], measured["startup_seconds"], deadline - time.time() - speed_reserve,
            most=args.max_epochs, least=args.min_epochs, finish=finish_seconds,
        )
        summary["plan"] = {"epochs": epochs, "left_out": left_out, "finish_seconds": finish_seconds, "speed_reserve_seconds": speed_reserve}
        print(f"plan: {', '.join(f'{n} {e} epochs' for n, e in epochs.items()) or 'nothing fits'}"
              + "".join(f"; left out {label}: {why}" for label, why in left_out.items()), flush=True)
    else:
        epochs = {name: int(args.epochs) for _, names in groups for name in names}
    commands = {name: command for name, command in job_commands(args, data_dir, runs, {n: epochs.get(n, 0) for _, ns in groups for n in ns}).items() if name in epochs}
    jobs = [Job(name, command, runs / f"{name}.log", env) for name, command in commands.items()]
    print(f"started {', '.join(commands) or 'nothing'} ({time.time() - started:.0f} s)", flush=True)
    _wait(jobs, deadline)  # a run that overruns the plan keeps going into the speed reserve: it is worth more
    for job in jobs:
        running = job.running
        job.stop()
        if running:
            summary["jobs"][job.name] = f"stopped at the deadline after {_epochs_done(job.log_path)} epochs"
        else:
            summary["jobs"][job.name] = "finished" if job.process.returncode == 0 else f"failed ({job.process.returncode}): see {job.name}.log"
    summary["epochs"] = epochs
    print(f"trainings done ({time.time() - started:.0f} s): " + ", ".join(f"{n} {s}" for n, s in summary["jobs"].items()), flush=True)
    if args.speed:
        summary["speed"] = speed(args, env, runs, deadline)
        print(f"speed: {summary['speed']} ({time.time() - started:.0f} s)", flush=True)
    finish()


def _epochs_done(log):
    """The last `epoch N/M` line's N in a training log (zoo train and torch_reference print one per epoch)."""
    import re

    done = re.findall(r"^epoch (\d+)/\d+", log.read_text(errors="replace"), re.MULTILINE)
    return int(done[-1]) if done else 0


def _float16_weights(models, env):
    """model.weights.h5 in float16 beside each model.keras (in a JAX process: no TensorFlow on the GPU machine)."""
    convert = (
        "import sys, keras; from zoo.files import save_float16_weights\n"
        "for path in sys.argv[1:]:\n"
        "    save_float16_weights(keras.saving.load_model(path, compile=False), path[: -len('model.keras')] + 'model.weights.h5')\n"
    )
    return subprocess.run([sys.executable, "-c", convert, *models], env={**env, "KERAS_BACKEND": "jax"}, capture_output=True, text=True)


def _bring_back(runs, out, env):
    """A tar of the kept files of every run (model.keras as float16 weights), in parts of at most 15 MiB."""
    models = sorted(str(p) for p in runs.glob("*/model.keras"))
    if models:
        done = _float16_weights(models, env)
        if done.returncode != 0:
            print(done.stderr[-3000:], flush=True)  # the logs still come back
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
        model = build_model(recipe, (*recipe["data"]["image_size"], recipe["data"]["channels"]), classes)
        model.load_weights(weights)
        model.save(run_dir / "model.keras")
        print(f"{run_dir}: model.keras from its float16 weights ({model.count_params():,} params)")
    summary = into / "summary.json"
    if summary.exists():
        print(summary.read_text())
    for reference in sorted(into.glob("reference_*.json")):
        r = json.loads(reference.read_text())
        epochs = f"stopped {r['stopped']}" if r.get("stopped") else f"{r['recipe']['epochs']} epochs"
        print(f"{reference.name}: {r['model']} test {r['test_accuracy']:.4f} ({r['test_accuracy_flip_tta']:.4f} flip TTA), "
              f"{r['images_per_second'] or 0:.0f} images/s, {epochs} on {r['device']}")


def _epochs_arg(value):
    if value == "auto" or (value.isdigit() and int(value) >= 1):
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: give auto or a number of epochs >= 1")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="here: the data and wheels for the lease, in .devdata/")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--dest", default=str(PACK))
    p.add_argument("--no-wheels", action="store_true", help="leave out the wheels (for a machine that has Keras)")
    p.add_argument("--python-version", default="3.12", help="of the machine that runs them (default: 3.12, the GPU machine's)")
    p = commands.add_parser("run", help="on the GPU machine: smoke pass, measured schedule, training, step speed; results into --out")
    p.add_argument("--out", required=True, help="where the parts go ($OUT on the lease)")
    p.add_argument("--pack", default=str(PACK))
    p.add_argument("--work", default="/tmp/zoo-gpu", help="data and run folders while it runs")
    p.add_argument("--minutes", type=float, default=8, help="stop everything still running this long after the start (default: 8; bringing the files back takes under a minute more)")
    p.add_argument("--epochs", default="auto", type=_epochs_arg,
                   help="auto (default): time an epoch of every job running together, then give each model's pair the most epochs that end before the deadline; or a number for all")
    p.add_argument("--max-epochs", type=int, default=200, help="with --epochs auto: at most this many (default: 200, the peers' schedule)")
    p.add_argument("--min-epochs", type=int, default=30, help="with --epochs auto: a model's pair that cannot reach this many is left out (default: 30)")
    p.add_argument("--recipes", nargs="*", default=["vgg16_bn_cifar10", "vgg11_bn_cifar10"], help="in order of value: the first gets its place first")
    p.add_argument("--references", nargs="*", default=["vgg16_bn", "vgg11_bn"], help="models trained by torch_reference.py")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides for every run (the references use the data.* keys)")
    p.add_argument("--limit", type=int, help="only this many images (a quick check of the whole path)")
    p.add_argument("--backup-every", type=int, default=10)
    p.add_argument("--augment-on", default="auto", choices=("auto", "host", "device"))
    p.add_argument("--compile", action="store_true", help="torch.compile the references")
    p.add_argument("--smoke-images", type=int, default=512, help="first run every job for one epoch on this many images, and stop if any fails (0: no smoke pass)")
    p.add_argument("--smoke-seconds", type=float, default=240, help="a smoke job still running after this long counts as failed")
    p.add_argument("--probe-seconds", type=float, default=180, help="with --epochs auto: the longest the epoch timing may take")
    p.add_argument("--speed", action="store_true", help="after the trainings, measure the training step with train_speed.py in the time left")
    p.add_argument("--speed-seconds", type=float, default=0, help="with --speed and --epochs auto: kept free of training for it (default: 0, it takes what the trainings leave)")
    p.add_argument("--speed-only", nargs="*", default=["zoo train", "compiled", "PyTorch bf16"], help="train_speed.py --only: the configurations to measure, most telling first")
    p.add_argument("--speed-models", nargs="*", default=["vgg16_bn"])
    p.add_argument("--speed-repeats", type=int, default=1)
    p.add_argument("--speed-batch", type=int, default=256)
    p.add_argument("--speed-steps", type=int, default=100)
    p = commands.add_parser("unpack", help="here: the returned parts -> run folders")
    p.add_argument("folder")
    p.add_argument("--into", required=True)
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.data_dir, args.dest, wheels=not args.no_wheels, python_version=args.python_version)
    elif args.command == "run":
        if args.limit:
            args.set.append(f"data.limit={args.limit}")
        run(args)
    else:
        unpack(args.folder, args.into)


if __name__ == "__main__":
    main()
