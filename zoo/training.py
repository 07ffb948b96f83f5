"""Recipe -> data, model, optimizer, callbacks, fit -> a run folder with the model, numbers and plots.

A run folder holds `recipe.toml` (the resolved recipe), `model.keras` (best on validation),
`history.csv`, `results.json`, `logs/` (TensorBoard, TensorFlow backend only), `plots/` and,
while training, `backup/` (the resume point). Re-running the same command resumes from it. One
training at a time holds a run folder (a lock file beside it).
"""

import contextlib
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile
import time

import keras

from zoo import recipe as recipes
from zoo.data import Batches, EpochSync, load_dataset, one_hot
from zoo.models import get_model
from zoo.evaluation import evaluate, hardware, versions
from zoo.files import LockedError, exclusive_lock, write_atomically, write_text_atomically

BACKUP = "backup"
STATE = "state.json"


class RunFolderError(FileExistsError):
    """A run folder that cannot be used as asked (finished, or started with another recipe)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN before the first checkpoint: the run has nothing to keep."""


def prepare_run_folder(run_dir, recipe, overwrite=False):
    """Create `run_dir`, or check that it can be resumed; return the epoch to resume from (0: fresh)."""
    run_dir = pathlib.Path(run_dir)
    recipe_text = recipes.to_toml(recipe)
    if run_dir.exists() and any(run_dir.iterdir()):
        if overwrite:  # the last finished run is kept aside until the new one has finished
            previous = _previous(run_dir)
            if previous.exists():  # run_dir is an unfinished replacement of it: only that goes
                shutil.rmtree(run_dir)
            else:
                os.replace(run_dir, previous)
            print(f"--overwrite: the previous run is kept in {previous} until this one finishes", flush=True)
        elif (run_dir / "results.json").exists():
            raise RunFolderError(f"Run folder {run_dir} holds a finished run. Use another --out, or --overwrite to replace it.")
        elif (run_dir / "recipe.toml").exists() and not _same_run(run_dir / "recipe.toml", recipe):
            if (run_dir / BACKUP).exists() or (run_dir / "model.keras").exists():
                raise RunFolderError(
                    f"Run folder {run_dir} was started with a different recipe, so it cannot be resumed with this one. "
                    "Use another --out, or --overwrite to start again."
                )
            # Stopped before its first backup (e.g. by bad data): nothing to keep, start this recipe in it.
            print(f"{run_dir} holds no epoch of its other recipe: starting this one there", flush=True)
            for leftover in (run_dir / STATE, run_dir / "history.csv"):
                leftover.unlink(missing_ok=True)
            shutil.rmtree(run_dir / "logs", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.toml").write_text(recipe_text)
    metadata = run_dir / BACKUP / "training_metadata.json"  # written by keras.callbacks.BackupAndRestore
    epoch = json.loads(metadata.read_text())["epoch"] if metadata.exists() else 0
    _drop_epochs_from(run_dir / "history.csv", epoch)
    return epoch


def _same_run(recipe_file, recipe):
    """Whether a run folder's `recipe_file` defines the same run as `recipe`: only the location of
    the data (`data_dir`, `tfds_data_dir`, so a run resumes after its data moved) and the words
    (`description`, `[expected]`) may differ."""
    try:
        stored = recipes.load(recipe_file)
    except recipes.RecipeError:
        return False

    def what(r):
        return {**r, "name": None, "description": None, "expected": None, "data": {**r["data"], "data_dir": "", "tfds_data_dir": ""}}

    return what(stored) == what(recipe)


def _previous(run_dir):
    return run_dir.with_name(f".{run_dir.name}-previous")


def make_optimizer(recipe, steps_per_epoch):
    opt, sched = recipe["optimizer"], recipe["schedule"]
    total = recipe["training"]["epochs"] * steps_per_epoch
    if sched["name"] == "warmup_cosine":
        warmup = min(int(sched["warmup_epochs"] * steps_per_epoch), total - 1)
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else opt["learning_rate"],
            decay_steps=max(total - warmup, 1),
            alpha=sched["final_fraction"],
            warmup_target=opt["learning_rate"] if warmup else None,
            warmup_steps=warmup,
        )
    else:
        learning_rate = opt["learning_rate"]
    optimizer = keras.optimizers.SGD(
        learning_rate=learning_rate,
        momentum=opt["momentum"],
        nesterov=opt["nesterov"],
        weight_decay=opt["weight_decay"] or None,
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}


def resolve_precision(precision, cpuinfo="/proc/cpuinfo"):
    """The dtype policy for a recipe's `precision`; "auto" picks mixed bfloat16 only where it is fast.

    On a CPU without bfloat16 instructions (AVX512-BF16 or AMX) mixed_bfloat16 trains over ten
    times slower than float32, so "auto" keeps float32 there. The CPU's kind decides it, and the
    machines this project runs on differ: so do the runs of a recipe with "auto".
    """
    if precision != "auto":
        return precision
    if any(not d.lower().startswith("cpu") and "cpu:" not in d.lower() for d in keras.distribution.list_devices()):
        return "mixed_bfloat16"
    return "mixed_bfloat16" if BF16_CPU_FLAGS & cpu_flags(cpuinfo) else "float32"


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags (empty where /proc/cpuinfo is missing, e.g. on macOS)."""
    try:
        with open(cpuinfo) as f:
            return set(next((line for line in f if line.startswith("flags")), ":").split(":", 1)[1].split())
    except OSError:
        return set()


def build_model(recipe, input_shape, num_classes):
    options = {k: v for k, v in recipe["model"].items() if k != "name" and v is not None}
    if "fc_units" in options:
        options["fc_units"] = tuple(options["fc_units"])
    return get_model(recipe["model"]["name"], input_shape=input_shape, num_classes=num_classes, **options)


class BestCheckpoint(keras.callbacks.Callback):
    """Keep the model of the best `val_accuracy` in `path`, written atomically (a kill never leaves half a file).

    With `every` > 1 the best weights wait in memory and are written every `every` epochs (with the
    backup, so a resumed run finds the checkpoint of the epoch it resumes from) and at the end.
    """

    def __init__(self, path, best=-math.inf, every=1):
        super().__init__()
        self.path, self.best, self.every = pathlib.Path(path), best, every
        self.waiting = None  # the best weights, while not yet written

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_accuracy")
        improved = value is not None and value > self.best and math.isfinite(logs.get("loss", 0.0))
        if improved:
            self.best = value
        if (epoch + 1) % self.every == 0:
            if improved:
                self.waiting = None
                write_atomically(self.path, self.model.save)
            else:
                self._write_waiting()
        elif improved:
            self.waiting = self.model.get_weights()

    def on_train_end(self, logs=None):
        self._write_waiting()

    def _write_waiting(self):
        if self.waiting is None:
            return
        current = self.model.get_weights()
        self.model.set_weights(self.waiting)
        try:
            write_atomically(self.path, self.model.save)
        finally:
            self.model.set_weights(current)
        self.waiting = None


class PeriodicBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` every `every` epochs (a kill loses at most `every` - 1 of them).

    A VGG16-BN backup takes about 0.5 s to write, which is a large share of a GPU epoch of a few seconds.
    """

    def __init__(self, backup_dir, every=1):
        super().__init__(backup_dir, double_checkpoint=True)
        self.every = every

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            super().on_epoch_end(epoch, logs)


class StopOnNaN(keras.callbacks.Callback):
    """Stop training once the loss is not finite, and remember that it did.

    The loss in the logs is the epoch's running mean, so it stays NaN once it was; reading it every
    `every` batches (not every batch) keeps an accelerator from waiting on the host at each step.
    """

    stopped = False

    def __init__(self, every=16):
        super().__init__()
        self.every = every

    def on_train_batch_end(self, batch, logs=None):
        if batch % self.every == self.every - 1 and not math.isfinite(float((logs or {}).get("loss", 0.0))):
            self.stopped = self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite(float((logs or {}).get("loss", 0.0))):
            self.stopped = self.model.stop_training = True


class RunState(keras.callbacks.Callback):
    """Keeps `state.json`: training seconds so far and the epochs the run resumed from."""

    def __init__(self, path, initial_epoch, epochs):
        super().__init__()
        self.path, self.epochs = pathlib.Path(path), epochs
        self.state = json.loads(self.path.read_text()) if self.path.exists() else {"train_seconds": 0.0, "resumed_from_epoch": []}
        if initial_epoch:
            self.state["resumed_from_epoch"].append(initial_epoch)

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        self.state["train_seconds"] += seconds
        if math.isfinite(logs.get("loss", 0.0)):  # an epoch cut short by a NaN loss does not count
            self.state["epoch"] = epoch + 1
        write_text_atomically(self.path, json.dumps(self.state))
        per_epoch = self.state["train_seconds"] / (epoch + 1)
        validation = f"val_accuracy {logs['val_accuracy']:.4f}, " if "val_accuracy" in logs else ""
        print(
            f"epoch {epoch + 1}/{self.epochs}: {seconds:.0f}s, loss {logs.get('loss', float('nan')):.4f}, "
            f"{validation}ETA {_duration(per_epoch * (self.epochs - epoch - 1))}",
            flush=True,
        )


def _duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _history_rows(history_csv):
    """The header and rows of a CSVLogger file ([], [] if there is none yet)."""
    lines = history_csv.read_text().splitlines() if history_csv.exists() else []
    return (lines[0], [l for l in lines[1:] if l]) if lines else (None, [])


def _drop_epochs_from(history_csv, epoch):
    """Forget rows logged for `epoch` and later: a resumed run logs them again."""
    header, rows = _history_rows(history_csv)
    if header:
        history_csv.write_text("\n".join([header, *(r for r in rows if int(r.split(",")[0]) < epoch)]) + "\n")


def _best_val_accuracy(history_csv):
    header, rows = _history_rows(history_csv)
    if not header or "val_accuracy" not in header.split(","):
        return -math.inf
    column = header.split(",").index("val_accuracy")
    return max((float(r.split(",")[column]) for r in rows), default=-math.inf)


def train(recipe, run_dir, *, overwrite=False, strategy=None, data_threads=1, backup_every=1, verbose="auto"):
    """Train `recipe` (a resolved recipe dict) into `run_dir`; resume if it holds a backup.

    `data_threads` threads prepare batches ahead of the training step (each batch depends only on the
    seed, epoch and index, so results do not depend on it). The backup and the best checkpoint are
    written every `backup_every` epochs and at the end.

    Returns the results (None on the non-chief workers of a multi-worker run, which write nothing).
    """
    from zoo import distribute

    for name, value in (("data_threads", data_threads), ("backup_every", backup_every)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1. Received: {name}={value!r}")
    options = dict(data_threads=data_threads, backup_every=backup_every, verbose=verbose)
    dist = distribute.setup(strategy)  # first: multi-worker needs an untouched runtime
    image_size = tuple(recipe["data"]["image_size"])
    build_model(recipe, (*image_size, 3), num_classes=2)  # fails fast on a bad model section
    if not dist.chief:  # a non-chief worker keeps no run folder: it follows the chief's
        initial_epoch = _chief_epoch(dist)
        worker_dir = tempfile.mkdtemp(prefix=f"zoo-worker{dist.worker}-")
        try:
            return _train(recipe, pathlib.Path(worker_dir), initial_epoch, dist, **options)
        finally:
            shutil.rmtree(worker_dir, ignore_errors=True)
    run_dir = pathlib.Path(run_dir)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_run_folder_lock(run_dir))
            initial_epoch = prepare_run_folder(run_dir, recipe, overwrite)
        except BaseException:
            if dist.strategy is not None:  # the other workers wait for the epoch: tell them not to start
                _chief_epoch(dist, -1)
            raise
        if dist.strategy is not None:
            _chief_epoch(dist, initial_epoch)
        try:
            return _train(recipe, run_dir, initial_epoch, dist, **options)
        except BaseException:
            _drop_if_empty(run_dir)
            raise


def _drop_if_empty(run_dir):
    """After a failure: remove a run folder that holds no checkpoint (it failed before its first good
    epoch, e.g. on bad data or a NaN loss), and put back the finished run it was replacing."""
    if (run_dir / "model.keras").exists() or (run_dir / "results.json").exists():
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    if _previous(run_dir).exists():
        os.replace(_previous(run_dir), run_dir)
        print(f"the previous run is back in {run_dir}", flush=True)


@contextlib.contextmanager
def _run_folder_lock(run_dir):
    """One training process per run folder: the lock file lies beside it, so `--overwrite` can move it."""
    try:
        folder = run_dir.resolve()
        with exclusive_lock(folder.parent / f".{folder.name}.lock"):
            yield
    except LockedError as e:
        raise RunFolderError(f"Run folder {run_dir} is in use by another training ({e}). Wait for it to end, or use another --out.") from None


def _chief_epoch(dist, epoch=0):
    """The epoch the chief starts from, on every worker of a multi-worker run (-1: it cannot start)."""
    from zoo import multi_worker

    epoch = int(multi_worker.chief_value(dist.strategy, epoch))
    if epoch < 0 and not dist.chief:
        raise RunFolderError("The chief worker cannot use its run folder (its log says why), so this worker stops too.")
    return epoch


def _train(recipe, run_dir, initial_epoch, dist, **options):
    if initial_epoch:
        print(f"resuming from epoch {initial_epoch}", flush=True)
    keras.utils.set_random_seed(recipe["training"]["seed"])
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(resolve_precision(recipe["training"]["precision"]))
    try:
        return _fit(recipe, run_dir, initial_epoch, dist, **options)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _fit(recipe, run_dir, initial_epoch, dist, *, data_threads, backup_every, verbose):
    epochs = recipe["training"]["epochs"]
    image_size = tuple(recipe["data"]["image_size"])
    data_cfg = recipe["data"]
    dataset = load_dataset(
        data_cfg["source"],
        data_dir=data_cfg["data_dir"] or None,
        tfds_data_dir=data_cfg["tfds_data_dir"] or None,
        image_size=image_size,
        validation_size=data_cfg["validation_size"],
        seed=recipe["training"]["seed"],
        limit=data_cfg["limit"] or None,
    )
    num_classes = len(dataset.class_names)

    def batches(shard=None):
        return Batches(
            dataset.train, data_cfg["batch_size"] * dist.replicas, seed=recipe["training"]["seed"],
            augmentation=recipe["augment"], epoch=initial_epoch, one_hot=num_classes,  # one-hot for label smoothing
            shard=shard, threads=data_threads,
        )

    train_batches = batches((0, dist.replicas) if dist.strategy else None)
    label_smoothing = recipe["training"]["label_smoothing"]
    with dist.scope():
        model = build_model(recipe, (*image_size, 3), num_classes)
        model.compile(
            optimizer=make_optimizer(recipe, len(train_batches)),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing),
            metrics=["accuracy"],
        )
    validation = (dataset.val.images, one_hot(dataset.val.labels, num_classes))
    if dist.chief:
        print(
            f"{recipe['model']['name']} ({model.count_params():,} params, {keras.config.dtype_policy().name}) on "
            f"{dataset.source}: {len(dataset.train):,} train / {len(dataset.val):,} validation / {len(dataset.test):,} "
            f"test images; {epochs} epoch{'s' if epochs > 1 else ''} of {len(train_batches)} steps -> {run_dir}",
            flush=True,
        )
    nan_guard = StopOnNaN()
    callbacks = [nan_guard, RunState(run_dir / STATE, initial_epoch, epochs)]
    if dist.chief:
        callbacks[:0] = [
            BestCheckpoint(run_dir / "model.keras", best=_best_val_accuracy(run_dir / "history.csv"), every=backup_every),
            keras.callbacks.CSVLogger(run_dir / "history.csv", append=True),
        ]
        if keras.backend.backend() == "tensorflow":
            callbacks.append(keras.callbacks.TensorBoard(run_dir / "logs"))
        # Last, so an epoch counts as done only once everything above has been written for it.
        callbacks.append(PeriodicBackup(run_dir / BACKUP, every=backup_every))
    if verbose == "auto":  # a progress bar on a terminal; RunState's line per epoch either way
        verbose = 1 if sys.stdout.isatty() else 0
    if dist.strategy is not None:
        from zoo import multi_worker

        multi_worker.fit(
            model, batches, strategy=dist.strategy, epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks,
            validation=validation if dist.chief else None, label_smoothing=label_smoothing, verbose=verbose,
        )
        if not dist.chief:
            return None
    else:
        callbacks.insert(0, EpochSync(train_batches))
        model.fit(
            train_batches,
            shuffle=False,  # Batches shuffles by (seed, epoch): Keras' own reshuffle would differ after a resume
            validation_data=validation,
            validation_batch_size=train_batches.batch_size,  # Keras' default for arrays is 32: 8x the steps
            epochs=epochs,
            callbacks=callbacks,
            verbose=verbose,
        )
    return finish(run_dir, recipe, dataset, stopped_by_nan=nan_guard.stopped)


def finish(run_dir, recipe, dataset, stopped_by_nan=False):
    """Evaluate the best checkpoint on the test split once; write `results.json` and the plots."""
    from zoo import plots

    stopped = "nan_loss" if stopped_by_nan else None
    if not (run_dir / "model.keras").exists():
        raise TrainingDiverged(
            f"the loss became NaN before the first validation, so there is no checkpoint to keep (learning rate "
            f"{recipe['optimizer']['learning_rate']:g}): try a lower optimizer.learning_rate, or check the data."
        )
    if stopped:
        print(f"training stopped: the loss became NaN; keeping the last good checkpoint {run_dir / 'model.keras'}", flush=True)
    model = keras.saving.load_model(run_dir / "model.keras")
    test = evaluate(model, dataset.test, dataset.class_names, tta_flip=recipe["training"]["tta_flip"])
    state = json.loads((run_dir / STATE).read_text())
    epochs_done = state.get("epoch", 0)
    images = epochs_done * len(dataset.train)
    results = {
        "model": recipe["model"]["name"],
        "recipe": recipe["name"],
        "epochs": epochs_done,
        "stopped": stopped,
        "val_accuracy": _best_val_accuracy(run_dir / "history.csv"),
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_per_class_accuracy": test["per_class_accuracy"],
        "test_confusion_matrix": test["confusion_matrix"],
        "tta_flip": test["tta_flip"],
        "train_seconds": round(state["train_seconds"], 1),
        "images_per_second": round(images / state["train_seconds"], 1) if state["train_seconds"] else None,
        "resumed_from_epoch": state["resumed_from_epoch"],
        "data": {
            "source": dataset.source,
            "class_names": dataset.class_names,
            "train_images": len(dataset.train),
            "val_images": len(dataset.val),
            "test_images": len(dataset.test),
        },
        "params": model.count_params(),
        "precision": keras.config.dtype_policy().name,
        "hardware": hardware(),
        "versions": versions(),
    }
    plots.history_curves(run_dir / "history.csv", run_dir / "plots" / "history.png")
    plots.confusion_matrix(test["confusion_matrix"], dataset.class_names, run_dir / "plots" / "confusion_matrix.png")
    write_text_atomically(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    shutil.rmtree(_previous(run_dir), ignore_errors=True)  # a run this one replaced with --overwrite
    tta = " with flip TTA" if test["tta_flip"] else ""
    print(f"test accuracy {test['accuracy']:.4f}{tta} (loss {test['loss']:.4f}) -> {run_dir / 'results.json'}", flush=True)
    return results
