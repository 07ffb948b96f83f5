"""Recipe -> data, model, optimizer, callbacks, fit -> a run folder with the model, numbers and plots.

What a run folder holds and when a command may train in it: `zoo.run_folder`. Re-running the same
command resumes from its backup.
"""

import contextlib
import json
import pathlib
import shutil
import sys
import tempfile

import keras

from zoo import finetune, keras_input
from zoo.callbacks import AveragedWeights, BestCheckpoint, Lookahead, PeriodicBackup, RunState, StopOnNaN, StopWhenAsked
from zoo.data import Batches, EpochSync, folder_class_names, load_dataset, one_hot
from zoo.evaluation import evaluate, hardware, versions
from zoo.files import write_text_atomically
from zoo.ghost_batch_norm import use_ghost_batches
from zoo.models import get_model
from zoo.initialisation import dirac_convs, first_conv, whiten_first_conv
from zoo.optimizer import learning_rate_scales, make_optimizer
from zoo.run_folder import (
    BACKUP, STATE, RunFolderError, best_validation, drop_if_empty, prepare_run_folder, previous_run, run_folder_lock,
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN before the first checkpoint: the run has nothing to keep."""


BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}


def resolve_precision(precision, cpuinfo="/proc/cpuinfo"):
    """The dtype policy for a recipe's `precision`; "auto" picks mixed bfloat16 only where it is fast.

    On a CPU without bfloat16 instructions (AVX512-BF16 or AMX) mixed_bfloat16 trains over ten
    times slower than float32, so "auto" keeps float32 there. The CPU's kind decides it, and the
    machines this project runs on differ: so do the runs of a recipe with "auto".
    """
    if precision != "auto":
        return precision
    if has_accelerator():
        return "mixed_bfloat16"
    return "mixed_bfloat16" if BF16_CPU_FLAGS & cpu_flags(cpuinfo) else "float32"


def has_accelerator():
    """Whether the backend sees a GPU (or TPU)."""
    if keras.backend.backend() == "torch":  # keras.distribution has no torch implementation
        import torch

        return torch.cuda.is_available()
    return any(not d.lower().startswith("cpu") and "cpu:" not in d.lower() for d in keras.distribution.list_devices())


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags (empty where /proc/cpuinfo is missing, e.g. on macOS)."""
    try:
        with open(cpuinfo) as f:
            return set(next((line for line in f if line.startswith("flags")), ":").split(":", 1)[1].split())
    except OSError:
        return set()


SPEED_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # what decides a CPU's training speed and "auto" precision


def training_setting():
    """Where and how this process trains: precision, backend, CPU (name, cores, the flags that decide its
    speed) and accelerators. A resumed run records one per stretch of epochs, as machines differ."""
    where = hardware()
    return {
        "precision": keras.config.dtype_policy().name,
        "backend": keras.backend.backend(),
        "cpu": f"{where['cpu']}, {where['cpu_cores']} cores",
        "cpu_flags": [flag for flag in SPEED_CPU_FLAGS if flag in cpu_flags()],
        "accelerators": where["accelerators"],
    }


def build_model(recipe, input_shape, num_classes):
    """The recipe's model, its batch norms with `training.batch_norm_momentum` where the recipe sets one,
    normalizing groups of `training.ghost_batch_size` images while training where it sets one, and with the
    variables the recipe freezes left out of training (`freeze_variables`)."""
    options = {k: v for k, v in recipe["model"].items() if k not in ("name", "weights", "num_classes") and v is not None}
    if "fc_units" in options:
        options["fc_units"] = tuple(options["fc_units"])
    model = get_model(recipe["model"]["name"], input_shape=input_shape, num_classes=num_classes, **options)
    if recipe["training"]["batch_norm_momentum"] is not None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = recipe["training"]["batch_norm_momentum"]
    ghost, batch = recipe["training"]["ghost_batch_size"], recipe["data"]["batch_size"]
    if ghost:
        if ghost >= batch:
            raise ValueError(
                f"training.ghost_batch_size must be below data.batch_size ({batch}), or 0 (off): a group as large as the batch is plain batch norm. "
                f"Received: training.ghost_batch_size={ghost}"
            )
        if not use_ghost_batches(model, ghost, batch):
            raise ValueError(
                f"training.ghost_batch_size={ghost}: {recipe['model']['name']} has no batch norm to group (set model.batch_norm = true, or "
                "training.ghost_batch_size = 0)."
            )
    freeze_variables(model, recipe)
    return model


def freeze_variables(model, recipe):
    """Leave out of training what the recipe freezes: every batch norm's scale (`training.freeze_batch_norm_scales`)
    and the first convolution's kernel (`training.freeze_whitening`). Setting a layer trainable makes its variables
    trainable again (a fine-tune's phases), so call it after that. The saved layers stay plain Keras."""
    if recipe["training"]["freeze_batch_norm_scales"] and not freeze_batch_norm_scales(model):
        raise ValueError(
            f"training.freeze_batch_norm_scales = true: {recipe['model']['name']} has no batch norm with a scale to freeze "
            "(set model.batch_norm = true, or training.freeze_batch_norm_scales = false)."
        )
    if recipe["training"]["freeze_whitening"]:
        first_conv(model).kernel.trainable = False


def freeze_batch_norm_scales(model):
    """Keep every batch norm's scale (`gamma`, which starts at 1) out of training, as airbench and Page's "frozen
    batch norm scales" do; returns how many. Setting a layer trainable makes its scale trainable again, so call
    it after that. The saved layers stay plain `BatchNormalization`."""
    scales = [layer.gamma for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization) and layer.scale]
    for gamma in scales:
        gamma.trainable = False
    return len(scales)


def step_callbacks(recipe, steps_per_epoch):
    """The callbacks that are part of the recipe's training step (the speed benchmark runs them too)."""
    return [Lookahead(steps_per_epoch, recipe["training"]["epochs"])] if recipe["optimizer"]["lookahead"] else []


AUGMENT_ON = ("auto", "host", "device")


def train(
    recipe, run_dir, *, overwrite=False, strategy=None, data_threads=1, backup_every=1, verbose="auto", backend_choice=None,
    augment_on="auto",
):
    """Train `recipe` (a resolved recipe dict) into `run_dir`; resume if it holds a backup.

    `data_threads` threads prepare batches ahead of the training step (each batch depends only on the
    seed, epoch and index, so results do not depend on it). The backup and the best checkpoint are
    written every `backup_every` epochs and at the end. `augment_on` is where batches are gathered and
    augmented: "host" (NumPy), "device" (the training set lives on the accelerator, see `zoo.augment`) or
    "auto" (the device where there is an accelerator and the backend is JAX or torch, whose `fit` takes
    device tensors as they are). The pixels are the same either way: only the speed differs.

    `backend_choice` (how the command chose the Keras backend) goes to results.json with the backend.

    Returns the results (None on the non-chief workers of a multi-worker run, which write nothing).
    """
    from zoo import distribute

    for name, value in (("data_threads", data_threads), ("backup_every", backup_every)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1. Received: {name}={value!r}")
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {', '.join(AUGMENT_ON)}. Received: augment_on={augment_on!r}")
    if augment_on == "device" and strategy is not None:
        raise ValueError(f"augment_on='device' works on one device; with strategy={strategy!r} batches are augmented on the host.")
    dist = distribute.setup(strategy)  # first: multi-worker needs an untouched runtime
    start = _check_before_work(recipe, dist)
    options = dict(start=start, data_threads=data_threads, backup_every=backup_every, verbose=verbose, backend_choice=backend_choice, augment_on=augment_on)
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
            stack.enter_context(run_folder_lock(run_dir))
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
            drop_if_empty(run_dir)
            raise


def _check_before_work(recipe, dist):
    """Fail fast, before any folder or data is touched: the model section, the starting weights
    (resolved, and fitted into the model's backbone), and the class folders of --data-dir.
    Returns the `finetune.StartingWeights` (None for "none")."""
    image_size, model = tuple(recipe["data"]["image_size"]), recipe["model"]
    probe = build_model(recipe, (*image_size, recipe["data"]["channels"]), num_classes=2)  # a bad model section
    start = finetune.resolve(model["name"], model["weights"], {k: v for k, v in model.items() if v is not None})
    if start is not None:
        finetune.transfer(start, probe, [])  # a backbone of another architecture
        if recipe["finetune"]["frozen_epochs"] and dist.strategy is not None:  # its own loop has no phases
            raise ValueError("finetune.frozen_epochs is not supported with --strategy multi_worker: set it to 0.")
    if recipe["optimizer"]["use_ema"] and dist.strategy is not None:  # its own loop validates the raw weights
        raise ValueError("optimizer.use_ema is not supported with --strategy multi_worker: set it to false.")
    if recipe["optimizer"]["lookahead"] and dist.strategy is not None:  # not written for mirrored variables
        raise ValueError("optimizer.lookahead is not supported with --strategy multi_worker: set it to false.")
    if recipe["data"]["data_dir"]:
        _check_classes(recipe, folder_class_names(recipe["data"]["data_dir"]), recipe["data"]["data_dir"])
    return start


def _check_classes(recipe, class_names, source):
    pinned = recipe["model"]["num_classes"]
    if not class_names:
        raise ValueError(
            f"{source} has no class folders. Expected one folder per class, {source}/<class>/*.jpg (or train/<class>/* and "
            "test/<class>/*); if it holds the images themselves, point --data-dir at the folder above their class folder."
        )
    if len(class_names) < 2:
        raise ValueError(f"{source} has 1 class folder ({class_names[0]}): a classifier needs at least 2.")
    if pinned is not None and pinned != len(class_names):
        raise ValueError(
            f"model.num_classes pins {pinned} classes, but {source} has {len(class_names)} ({', '.join(class_names)}). "
            "Unset model.num_classes to take the data's classes."
        )


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


def _fit(recipe, run_dir, initial_epoch, dist, *, start, data_threads, backup_every, verbose, backend_choice, augment_on):
    epochs = recipe["training"]["epochs"]
    image_size = tuple(recipe["data"]["image_size"])
    data_cfg = recipe["data"]
    dataset = load_dataset(
        data_cfg["source"],
        data_dir=data_cfg["data_dir"] or None,
        tfds_data_dir=data_cfg["tfds_data_dir"] or None,
        image_size=image_size,
        channels=data_cfg["channels"],
        validation_size=data_cfg["validation_size"],
        validation_fraction=data_cfg["validation_fraction"],
        test_fraction=data_cfg["test_fraction"],
        seed=recipe["training"]["seed"],
        limit=data_cfg["limit"] or None,
    )
    _check_classes(recipe, dataset.class_names, dataset.source)
    num_classes = len(dataset.class_names)
    if dist.chief:  # so that eval, predict and export name the classes while it trains, and after a stop
        write_text_atomically(run_dir / "labels.txt", "".join(f"{name}\n" for name in dataset.class_names))

    on_device = augment_on == "device" or (
        augment_on == "auto" and dist.strategy is None and keras.backend.backend() != "tensorflow" and has_accelerator()
    )

    def batches(shard=None):
        return Batches(
            dataset.train, data_cfg["batch_size"] * dist.replicas, seed=recipe["training"]["seed"],
            augmentation=recipe["augment"], epoch=initial_epoch, one_hot=num_classes,  # one-hot for label smoothing
            shard=shard, threads=data_threads, on_device=on_device,
        )

    train_batches = batches((0, dist.replicas) if dist.strategy else None)
    label_smoothing = recipe["training"]["label_smoothing"]
    tuning = recipe["finetune"]
    phases = _phases(epochs, tuning["frozen_epochs"] if start else 0)
    with dist.scope():
        model = build_model(recipe, (*image_size, data_cfg["channels"]), num_classes)
        change = finetune.transfer(start, model, dataset.class_names) if start else None
        whitened = identities = 0
        if initial_epoch == 0:  # a resume restores the trained weights
            if recipe["training"]["whitening_init"]:
                whitened = whiten_first_conv(model, dataset.train.images, recipe["training"]["seed"])
            if recipe["training"]["dirac_init"]:
                identities = dirac_convs(model)
        backbone = [v.path for v in finetune.backbone_variables(model)] if start else ()
        scales = learning_rate_scales(model, recipe["optimizer"]["batch_norm_bias_lr_scale"], backbone, tuning["backbone_lr_scale"])
        optimizer = make_optimizer(recipe, len(train_batches), scales)

        def set_backbone(frozen):  # setting the layers trainable makes their frozen variables trainable too
            finetune.freeze_backbone(model, frozen, batch_norm_frozen=tuning["batch_norm_frozen"])
            freeze_variables(model, recipe)

        if start:  # its state holds every variable some phase trains: one layout for every backup
            set_backbone(False)
            optimizer.build(model.trainable_variables)

        def compile_for(frozen):
            if start:
                set_backbone(frozen)
            model.compile(
                optimizer=optimizer,
                loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing),
                metrics=["accuracy"],
            )

        compile_for(phases[0][2])
    # No validation images (data.validation_size = 0): train on all of them and keep the last epoch.
    validation = (dataset.val.images, one_hot(dataset.val.labels, num_classes)) if len(dataset.val) else None
    if dist.chief:
        split = dataset.split
        how = f" (one folder, {split['test_fraction']:.0%} of each class for test, seed {split['seed']})" if "test_fraction" in split else ""
        started = f"; {finetune.head_summary(start, change)}" if start else ""
        frozen = f", the first {phases[0][1]} with the backbone frozen" if phases[0][2] else ""
        started += f"; {whitened} filters of {first_conv(model).name} whitened" if whitened else ""
        started += f"; {identities} convolution{'s' * (identities > 1)} started as identities" if identities else ""
        print(
            f"{recipe['model']['name']} ({model.count_params():,} params, {keras.config.dtype_policy().name}{started}) on "
            f"{dataset.source}{how}: {len(dataset.train):,} train / {len(dataset.val):,} validation / {len(dataset.test):,} "
            f"test images{' (augmented on the device)' if on_device else ''}; {epochs} epoch{'s' if epochs > 1 else ''} of "
            f"{len(train_batches)} steps{frozen} -> {run_dir}",
            flush=True,
        )
    nan_guard = StopOnNaN()
    # A resume whose best checkpoint was lost (see prepare_run_folder) chooses it again among the epochs to come.
    checkpoints_from = initial_epoch if initial_epoch and not (run_dir / "model.keras").exists() else 0
    callbacks = [nan_guard, RunState(run_dir / STATE, initial_epoch, epochs, training_setting())]
    if dist.chief:
        callbacks[:0] = [
            BestCheckpoint(run_dir / "model.keras", best=best_validation(run_dir / "history.csv", checkpoints_from), every=backup_every)
            if len(dataset.val) else BestCheckpoint(run_dir / "model.keras", best=(initial_epoch - 1,), every=backup_every, last=True),
            keras.callbacks.CSVLogger(run_dir / "history.csv", append=True),
        ]
        if keras.backend.backend() == "tensorflow":
            callbacks.append(keras.callbacks.TensorBoard(run_dir / "logs"))
        # Last, so an epoch counts as done only once everything above has been written for it.
        backup = PeriodicBackup(run_dir / BACKUP, every=backup_every)
        callbacks.append(backup)
    if recipe["optimizer"]["use_ema"]:  # before the checkpoint and the backup: they see the average
        callbacks.insert(0, AveragedWeights(resumed=initial_epoch > 0))
    callbacks[:0] = step_callbacks(recipe, len(train_batches))  # before the checkpoint and the backup: they see the slow weights
    callbacks.insert(0, StopWhenAsked())  # first: a stop asked for comes before any write of the epoch
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
        train_input = keras_input.batches_input(train_batches)
        # Keras' default batch for arrays is 32: 8x the steps
        validation_input, validation_batch = keras_input.arrays_input(validation, train_batches.batch_size) if validation else (None, None)
        for begin, end, frozen in phases:  # a frozen-backbone phase, then the whole network; or one phase
            if end <= initial_epoch or nan_guard.stopped:
                continue
            if (begin, end, frozen) != phases[0]:
                with dist.scope():
                    compile_for(frozen)
            if dist.chief:
                backup.delete_checkpoint = False  # kept between phases and until results.json is written (finish)
            model.fit(
                train_input,
                shuffle=False,  # Batches shuffles by (seed, epoch): Keras' own reshuffle would differ after a resume
                validation_data=validation_input,
                validation_batch_size=validation_batch,
                initial_epoch=max(begin, initial_epoch),
                epochs=end,
                callbacks=callbacks,
                verbose=verbose,
            )
    backend = {"used": keras.backend.backend(), **(backend_choice or {"requested": None, "why": "Python API: KERAS_BACKEND or Keras' default"})}
    return finish(run_dir, recipe, dataset, stopped_by_nan=nan_guard.stopped, start=start, change=change, backend=backend, checkpoints_from=checkpoints_from)


def _phases(epochs, frozen_epochs):
    """`[(first epoch, end epoch, backbone frozen)]`: the frozen-backbone phase, if any, then the rest."""
    frozen_epochs = min(frozen_epochs, epochs)
    return ([(0, frozen_epochs, True)] if frozen_epochs else []) + ([(frozen_epochs, epochs, False)] if frozen_epochs < epochs else [])


def segments(state, epochs_done):
    """`state.json`'s stretches of epochs, each with its last epoch (`to_epoch`) and where it trained."""
    stretches = state.get("segments", [])
    ends = [stretch["from_epoch"] for stretch in stretches[1:]] + [epochs_done]
    return [{**stretch, "to_epoch": end} for stretch, end in zip(stretches, ends)]


def finish(run_dir, recipe, dataset, stopped_by_nan=False, start=None, change=None, backend=None, checkpoints_from=0):
    """Evaluate the best checkpoint on the test split once; write `results.json` and the plots."""
    from zoo import plots

    stopped = "nan_loss" if stopped_by_nan else None
    if not (run_dir / "model.keras").exists():
        raise TrainingDiverged(
            f"the loss became NaN in the first epoch (its validation figures come from NaN weights), so there is no checkpoint to keep (learning rate "
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
        "val_accuracy": best_validation(run_dir / "history.csv", checkpoints_from)[0] if len(dataset.val) else None,
        "checkpoint": "best validation epoch" if len(dataset.val) else "last epoch (no validation images)",
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_per_class_accuracy": test["per_class_accuracy"],
        "test_confusion_matrix": test["confusion_matrix"],
        "tta_flip": test["tta_flip"],
        "train_seconds": round(state["train_seconds"], 1),
        "images_per_second": round(images / state["train_seconds"], 1) if state["train_seconds"] else None,
        "resumed_from_epoch": state["resumed_from_epoch"],
        "segments": segments(state, epochs_done),
        "data": {
            "source": dataset.source,
            "class_names": dataset.class_names,
            "train_images": len(dataset.train),
            "val_images": len(dataset.val),
            "test_images": len(dataset.test),
            "split": dataset.split,
        },
        "starting_weights": {**start.record(), "head": finetune.head_summary(start, change), "new_layers": change["new"]} if start else None,
        "params": model.count_params(),
        "precision": keras.config.dtype_policy().name,
        "backend": backend or {"used": keras.backend.backend()},
        "hardware": hardware(),
        "versions": versions(),
    }
    plots.history_curves(run_dir / "history.csv", run_dir / "plots" / "history.png")
    plots.confusion_matrix(test["confusion_matrix"], dataset.class_names, run_dir / "plots" / "confusion_matrix.png")
    write_text_atomically(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    shutil.rmtree(run_dir / BACKUP, ignore_errors=True)  # kept until now: a failure above (a full disk) resumes into this
    shutil.rmtree(previous_run(run_dir), ignore_errors=True)  # a run this one replaced with --overwrite
    tta = " with flip TTA" if test["tta_flip"] else ""
    print(f"test accuracy {test['accuracy']:.4f}{tta} (loss {test['loss']:.4f}) -> {run_dir / 'results.json'}", flush=True)
    return results
